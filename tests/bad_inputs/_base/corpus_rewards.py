"""Reward functions that misbehave, for the bad-input corpus (TRL's signature)."""

import math


def raises(prompts, completions, **columns):
    raise ZeroDivisionError("division by zero in my reward")


def wrong_length(prompts, completions, **columns):
    return [1.0] * (len(completions) - 1)


def nan(prompts, completions, **columns):
    return [math.nan if i == 3 else 0.5 for i in range(len(completions))]
