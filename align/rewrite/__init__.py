"""BMC's rewrite: an LLM edits each loser towards its winner (rewriter) and the diff masks mark
the tokens the edit changed (masks).
"""
