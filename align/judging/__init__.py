"""The judge stage: MT-Bench and AlpacaEval for one policy (docs/judging.md). The policy answers
(policy), the protocols ask the judge and score (mtbench, alpacaeval, lc_winrate), the report
says what came out (report); `run_judge` (run) ties them together. Backends, the answer cache and
the shared prompts live in align/llm.
"""
