"""Reward functions that misbehave, for the bad-input corpus (TRL's signature)."""

import math


def raises(prompts, completions, **columns):
    raise ZeroDivisionError("division by zero in my reward")


def wrong_length(prompts, completions, **columns):
    return [1.0] * (len(completions) - 1)


def nan(prompts, completions, **columns):
    return [math.nan if i == 3 else 0.5 for i in range(len(completions))]


def exits(prompts, completions, **columns):
    import sys

    sys.exit(0)


def exits_with_message(prompts, completions, **columns):
    raise SystemExit("done scoring")


def interrupts(prompts, completions, **columns):
    raise KeyboardInterrupt


def returns_dict(prompts, completions, **columns):
    return {float(i): "score" for i in range(len(completions))}


def returns_strings(prompts, completions, **columns):
    return ["7" for _ in completions]


def returns_bools(prompts, completions, **columns):
    return [True for _ in completions]


def returns_empty(prompts, completions, **columns):
    return []


def returns_generator(prompts, completions, **columns):
    return (1.0 for _ in completions)


def returns_none(prompts, completions, **columns):
    return None


def returns_scalar(prompts, completions, **columns):
    return 1.0


def returns_inf(prompts, completions, **columns):
    return [math.inf for _ in completions]
