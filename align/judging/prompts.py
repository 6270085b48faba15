"""MT-Bench's and AlpacaEval's judge templates (own wording), built on the shared pieces in
align/llm/prompts.py. A template's `name@version` is part of the judgment cache key."""

from __future__ import annotations

from align.llm.prompts import RATE_FORMAT, Template, block

PAIR_FORMAT = (
    "Do not let the order in which the responses appear, their length or the assistants' "
    "names influence you. Give a short justification, then the final verdict on its own line "
    'in exactly this form: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, '
    '"[[C]]" if they are equally good.'
)
GENERAL = (
    "Weigh helpfulness, relevance, accuracy, depth, creativity and level of detail, and be "
    "objective."
)
REFERENCE = (
    "A correct reference answer is supplied. Compare against it: find and correct any mistakes "
    "in the response, and weigh correctness first, then helpfulness."
)

_Q1, _A1 = block("user question", "question"), block("assistant response", "answer")
_REF1 = block("reference answer", "ref_1")
_CONV = (
    "<<< conversation >>>\nUser: {question_1}\n\nAssistant: {answer_1}\n\n"
    "User: {question_2}\n\nAssistant: {answer_2}\n<<< end of conversation >>>\n\n"
)
_REF_CONV = (
    "<<< reference conversation >>>\nUser: {question_1}\n\nReference: {ref_1}\n\n"
    "User: {question_2}\n\nReference: {ref_2}\n<<< end of reference conversation >>>\n\n"
)
_PAIR_1 = block("response of assistant A", "answer_a") + block(
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
            f"Grade the response an AI assistant gave to the user question below. {GENERAL} "
            f"{RATE_FORMAT}\n\n{_Q1}{_A1}",
        ),
        Template(
            "mtbench-single-ref",
            1,
            f"Grade the response an AI assistant gave to the user question below. {REFERENCE} "
            f"{RATE_FORMAT}\n\n{_Q1}{_REF1}{_A1}",
        ),
        Template(
            "mtbench-single-multi",
            1,
            "Below is a two-turn conversation between a user and an AI assistant. Grade only "
            f"the assistant's second reply, in the light of the whole conversation. {GENERAL} "
            f"{RATE_FORMAT}\n\n{_CONV}",
        ),
        Template(
            "mtbench-single-ref-multi",
            1,
            "Below is a two-turn conversation between a user and an AI assistant, and a "
            "reference conversation with correct answers. Grade only the assistant's second "
            f"reply. {REFERENCE} {RATE_FORMAT}\n\n{_REF_CONV}{_CONV}",
        ),
        Template(
            "mtbench-pair",
            1,
            "Compare the responses two AI assistants gave to the user question below and "
            f"decide which is better. {GENERAL} {PAIR_FORMAT}\n\n{_Q1}{_PAIR_1}",
        ),
        Template(
            "mtbench-pair-ref",
            1,
            "Compare the responses two AI assistants gave to the user question below and "
            f"decide which is better. {REFERENCE} {PAIR_FORMAT}\n\n{_Q1}{_REF1}{_PAIR_1}",
        ),
        Template(
            "mtbench-pair-multi",
            1,
            "Below are two two-turn conversations, one with assistant A and one with assistant "
            "B, that start from the same user question. Decide whose second reply is better. "
            f"{GENERAL} {PAIR_FORMAT}\n\n{_PAIR_CONV}",
        ),
        Template(
            "mtbench-pair-ref-multi",
            1,
            "Below are two two-turn conversations, one with assistant A and one with assistant "
            "B, and a reference conversation with correct answers. Decide whose second reply is "
            f"better. {REFERENCE} {PAIR_FORMAT}\n\n{_REF_CONV}{_PAIR_CONV}",
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
    + block("instruction", "instruction")
    + block("output m", "first")
    + block("output M", "second")
    + "Answer with the label of the better output, m or M, and nothing else.",
    system="You compare the outputs of language models and name the better one.",
)
