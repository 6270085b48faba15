"""The project's judge prompts (own wording; the structure follows ALGORITHMS.md §6).

Each template has a name and a version; `name@version` is part of the judgment cache key, so
bump the version whenever a change alters what a verdict means (the prompt text itself is
hashed too, so any wording change already misses the cache).

Output formats: MT-Bench single grading and ratings end in `[[N]]` (1–10); pairwise verdicts
are `[[A]]`, `[[B]]` or `[[C]]` (tie); AlpacaEval answers with the label `m` or `M`; the online
preference answers with the letter `A` or `B`.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_GRADER = "You are an impartial, careful evaluator of AI assistant responses."

_RATE = (
    "Start with a short justification, then state the score on its own line exactly as "
    '[[score]], for example "Rating: [[6]]".'
)
_PAIR = (
    "Do not let the order in which the responses appear, their length or the assistants' "
    "names influence you. Give a short justification, then the final verdict on its own line "
    'in exactly this form: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, '
    '"[[C]]" if they are equally good.'
)
_GENERAL = (
    "Weigh helpfulness, relevance, accuracy, depth, creativity and level of detail, and be "
    "objective."
)
_REFERENCE = (
    "A correct reference answer is supplied. Compare against it: find and correct any mistakes "
    "in the response, and weigh correctness first, then helpfulness."
)


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    user: str  # str.format fields
    system: str = SYSTEM_GRADER

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, **fields: str) -> str:
        return self.user.format(**fields).rstrip()


def _block(title: str, field: str) -> str:
    return f"<<< {title} >>>\n{{{field}}}\n<<< end of {title} >>>\n\n"


_Q1, _A1 = _block("user question", "question"), _block("assistant response", "answer")
_REF1 = _block("reference answer", "ref_1")
_CONV = (
    "<<< conversation >>>\nUser: {question_1}\n\nAssistant: {answer_1}\n\n"
    "User: {question_2}\n\nAssistant: {answer_2}\n<<< end of conversation >>>\n\n"
)
_REF_CONV = (
    "<<< reference conversation >>>\nUser: {question_1}\n\nReference: {ref_1}\n\n"
    "User: {question_2}\n\nReference: {ref_2}\n<<< end of reference conversation >>>\n\n"
)
_PAIR_1 = _block("response of assistant A", "answer_a") + _block(
    "response of assistant B", "answer_b"
)
_PAIR_CONV = (
    "<<< conversation with assistant A >>>\nUser: {question_1}\n\nAssistant A: {answer_a_1}\n\n"
    "User: {question_2}\n\nAssistant A: {answer_a_2}\n<<< end of conversation with A >>>\n\n"
    "<<< conversation with assistant B >>>\nUser: {question_1}\n\nAssistant B: {answer_b_1}\n\n"
    "User: {question_2}\n\nAssistant B: {answer_b_2}\n<<< end of conversation with B >>>\n\n"
)

MTBENCH = {
    t.name: t
    for t in (
        Template(
            "mtbench-single",
            1,
            f"Grade the response an AI assistant gave to the user question below. {_GENERAL} "
            f"{_RATE}\n\n{_Q1}{_A1}",
        ),
        Template(
            "mtbench-single-ref",
            1,
            f"Grade the response an AI assistant gave to the user question below. {_REFERENCE} "
            f"{_RATE}\n\n{_Q1}{_REF1}{_A1}",
        ),
        Template(
            "mtbench-single-multi",
            1,
            "Below is a two-turn conversation between a user and an AI assistant. Grade only "
            f"the assistant's second reply, in the light of the whole conversation. {_GENERAL} "
            f"{_RATE}\n\n{_CONV}",
        ),
        Template(
            "mtbench-single-ref-multi",
            1,
            "Below is a two-turn conversation between a user and an AI assistant, and a "
            "reference conversation with correct answers. Grade only the assistant's second "
            f"reply. {_REFERENCE} {_RATE}\n\n{_REF_CONV}{_CONV}",
        ),
        Template(
            "mtbench-pair",
            1,
            "Compare the responses two AI assistants gave to the user question below and "
            f"decide which is better. {_GENERAL} {_PAIR}\n\n{_Q1}{_PAIR_1}",
        ),
        Template(
            "mtbench-pair-ref",
            1,
            "Compare the responses two AI assistants gave to the user question below and "
            f"decide which is better. {_REFERENCE} {_PAIR}\n\n{_Q1}{_REF1}{_PAIR_1}",
        ),
        Template(
            "mtbench-pair-multi",
            1,
            "Below are two two-turn conversations, one with assistant A and one with assistant "
            "B, that start from the same user question. Decide whose second reply is better. "
            f"{_GENERAL} {_PAIR}\n\n{_PAIR_CONV}",
        ),
        Template(
            "mtbench-pair-ref-multi",
            1,
            "Below are two two-turn conversations, one with assistant A and one with assistant "
            "B, and a reference conversation with correct answers. Decide whose second reply is "
            f"better. {_REFERENCE} {_PAIR}\n\n{_REF_CONV}{_PAIR_CONV}",
        ),
    )
}

ALPACAEVAL = Template(
    "alpacaeval-pair",
    1,
    "Two language models answered the instruction below. Their outputs are labelled m and M. "
    "Decide which output a thoughtful human reader would prefer: the one that carries out the "
    "instruction more accurately, helpfully and honestly. Ignore which output comes first and "
    "how long each is.\n\n"
    + _block("instruction", "instruction")
    + _block("output m", "first")
    + _block("output M", "second")
    + "Answer with the label of the better output, m or M, and nothing else.",
    system="You compare the outputs of language models and name the better one.",
)

ASPECTS = {
    "overall": "its overall quality: helpfulness, correctness, honesty and how well it follows "
    "the instructions",
    "helpfulness": "helpfulness: whether it addresses the need fully, clearly and usefully",
    "honesty": "honesty: whether it is candid about uncertainty and never invents facts",
    "instruction_following": "instruction following: whether it does exactly what was asked, "
    "respecting every stated constraint",
    "truthfulness": "truthfulness: whether its claims are accurate and free of fabrication",
}
RATING = {
    aspect: Template(
        f"rating-{aspect}",
        1,
        "Rate the assistant response below, given the conversation that led to it, focusing on "
        f"{description}. Use this 1–10 scale: 1–2 useless or harmful, 3–4 major problems, "
        f"5–6 acceptable with clear flaws, 7–8 good, 9–10 excellent. {_RATE}\n\n"
        + _block("conversation", "conversation")
        + _block("response to rate", "response"),
    )
    for aspect, description in ASPECTS.items()
}

PREFERENCE = Template(
    "preference-pair",
    1,
    "Two AI assistants replied to the conversation below. Decide which reply is better: more "
    "helpful, correct and honest. Ignore the order of the replies and their length.\n\n"
    + _block("conversation", "conversation")
    + _block("reply A", "answer_a")
    + _block("reply B", "answer_b")
    + "Answer with the single letter A or B, and nothing else.",
)


def render_conversation(messages: list[dict]) -> str:
    """Messages as 'Role: content' paragraphs (the judge's view of a prompt)."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
