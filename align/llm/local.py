"""Local HF judge: the judge model's own chat template, batched greedy decoding.

For offline runs and tests. The embedded SmolLM2-135M is a smoke-level judge: it exercises
every code path, but its verdicts mean little (docs/judging.md says how to point at a real one).
Decoding is always greedy (the request's temperature is part of the cache key only). A prompt
that does not fit the model's context is a recorded failure, never silently cut.
"""

from __future__ import annotations

import time

import torch

from align.config.judge import BackendConfig
from align.llm.backend import ChatRequest, ChatResult, OnResult, judge_fingerprint
from align.llm.parsing import RATINGS, rating_prefix
from align.model.loading import load_model, load_tokenizer, resolve_model
from align.model.logprobs import shared_prompt_logps
from align.model.tokenize import prompt_text


class LocalBackend:
    """Loads the model on first use (a fully cached run never loads it), on `device`."""

    def __init__(self, cfg: BackendConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = device
        self.judge_id = judge_fingerprint(cfg)
        self._model = None
        self._tokenizer = None
        self._stats: dict[str, float] = dict.fromkeys(
            ("requests", "failed", "input_tokens", "output_tokens"), 0
        )

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def _load(self) -> None:
        if self._model is None:
            path = resolve_model(self.cfg.model)
            self._model = load_model(path, self.cfg.dtype, device=self.device)
            self._tokenizer = load_tokenizer(path)

    def complete(
        self, requests: list[ChatRequest], on_result: OnResult | None = None
    ) -> list[ChatResult]:
        results: list[ChatResult] = [ChatResult(error="not run")] * len(requests)
        if not requests:
            return results
        self._load()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_tokens, r.top_logprobs), []).append(i)
        for (max_tokens, top_k), members in groups.items():
            size = self.cfg.batch_size
            for batch in (members[j : j + size] for j in range(0, len(members), size)):
                for i, result in zip(
                    batch,
                    self._generate([requests[i] for i in batch], max_tokens, top_k),
                    strict=True,
                ):
                    results[i] = result
                    self._stats["requests"] += 1
                    self._stats["failed"] += 0 if result.ok else 1
                    if on_result is not None:
                        on_result(i, result)
        return results

    @torch.no_grad()
    def _generate(
        self, requests: list[ChatRequest], max_tokens: int, top_k: int
    ) -> list[ChatResult]:
        model, tok = self._model, self._tokenizer
        assert model is not None and tok is not None
        started = time.monotonic()
        context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        texts = [prompt_text(tok, r.message_dicts()) for r in requests]
        lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
        fits = [i for i, n in enumerate(lengths) if n < context]
        out: list[ChatResult] = [
            ChatResult(error=f"judge prompt is {n} tokens; the judge's context is {context}")
            for n in lengths
        ]
        if not fits:
            return out
        enc = tok(
            [texts[i] for i in fits], return_tensors="pt", padding=True, add_special_tokens=False
        )
        enc = enc.to(model.device)
        gen = model.generate(
            **enc,
            max_new_tokens=max(1, min(max_tokens, context - max(lengths[i] for i in fits))),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            output_logits=top_k > 0,
            return_dict_in_generate=True,
        )
        new = gen.sequences[:, enc.input_ids.shape[1] :]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        seconds = (time.monotonic() - started) / len(fits)
        for row, i in enumerate(fits):
            ended = (new[row] == tok.eos_token_id).nonzero()
            n_out = int(ended[0, 0]) + 1 if len(ended) else new.shape[1]
            top = None
            if top_k > 0:
                logps = torch.log_softmax(gen.logits[0][row].float(), dim=-1)
                values, ids = logps.topk(min(top_k, logps.numel()))
                top = {}
                for v, t in zip(values.tolist(), ids.tolist(), strict=True):
                    token = tok.decode([t])
                    top[token] = max(v, top.get(token, float("-inf")))
            out[i] = ChatResult(
                text=decoded[row],
                top_logprobs=top,
                input_tokens=lengths[i],
                output_tokens=n_out,
                seconds=seconds,
            )
            self._stats["input_tokens"] += lengths[i]
            self._stats["output_tokens"] += n_out
        asked = [i for i in fits if requests[i].rating_probs and out[i].ok]
        pairs = [(texts[i], out[i].text or "") for i in asked]
        for i, probs in zip(asked, self._rating_probs(pairs), strict=True):
            out[i].rating_probs = probs
        return out

    @torch.no_grad()
    def _rating_probs(self, pairs: list[tuple[str, str]]) -> list[dict[int, float] | None]:
        """P(rating = k) for each (chat-templated prompt, judgment): the judge's own
        probability of continuing `rating_prefix(judgment)` with `k]]`, k = 1..10 (each
        candidate scored whole, so '10' is never confused with '1'), normalised over the ten.
        None where the prefix and a candidate do not fit the context."""
        model, tok = self._model, self._tokenizer
        assert model is not None and tok is not None
        context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        candidates = [tok(f"{k}]]", add_special_tokens=False).input_ids for k in RATINGS]
        longest = max(len(c) for c in candidates)
        out: list[dict[int, float] | None] = []
        for prompt, judgment in pairs:
            prefix, _ = rating_prefix(judgment)
            ids = tok(prompt + prefix, add_special_tokens=False).input_ids
            if len(ids) + longest > context:
                out.append(None)
                continue
            logps, _ = shared_prompt_logps(model, [(ids, candidates)], tok.pad_token_id)
            probs = torch.softmax(logps.float(), dim=-1).tolist()
            out.append(dict(zip(RATINGS, probs, strict=True)))
        return out
