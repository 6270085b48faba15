"""Text generation: batched HF sampling, the vLLM engine, and the geometric-mixture sampler of
the online losses.
"""
