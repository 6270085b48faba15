"""The judge prompts shared by every caller (own wording): the template type, the grading
phrases, and the rating and pairwise-preference templates that reward sources use. MT-Bench's
and AlpacaEval's own templates build on these in align/judging/prompts.py.

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

RATE_FORMAT = (
    "Start with a short justification, then state the score on its own line exactly as "
    '[[score]], for example "Rating: [[6]]".'
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


def block(title: str, field: str) -> str:
    return f"<<< {title} >>>\n{{{field}}}\n<<< end of {title} >>>\n\n"


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
        f"5–6 acceptable with clear flaws, 7–8 good, 9–10 excellent. {RATE_FORMAT}\n\n"
        + block("conversation", "conversation")
        + block("response to rate", "response"),
    )
    for aspect, description in ASPECTS.items()
}

PREFERENCE = Template(
    "preference-pair",
    1,
    "Two AI assistants replied to the conversation below. Decide which reply is better: more "
    "helpful, correct and honest. Ignore the order of the replies and their length.\n\n"
    + block("conversation", "conversation")
    + block("reply A", "answer_a")
    + block("reply B", "answer_b")
    + "Answer with the single letter A or B, and nothing else.",
)


def render_conversation(messages: list[dict]) -> str:
    """Messages as 'Role: content' paragraphs (the judge's view of a prompt)."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
