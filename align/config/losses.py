"""`train.loss`: one typed parameter model per loss, chosen by `name`.

Each model states its keys, their types, ranges and defaults, and the reason for each default
(the field's description, which `loss_parameters` lists). Class-level facts the pipeline rules
need sit beside them as ClassVars: `kind` (kwise: all K responses; pair: best against worst;
online: pairs sampled in training; upo: a preference loss plus an auxiliary-reward term),
`min_k` (valid responses a row needs), `ranking` (the loss reads only the order of the
rewards, so a row whose rewards all tie does not count) and `token_weights` ("bmc": the
trainer weights token log-probs by the rewrite stage's diff masks before the pair loss). The
loss functions that read these parameters are in align/train/losses.py, the BMC weights in
align/train/bmc.py, UPO's extra terms in align/train/upo.py.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter

from align.config.base import Strict

Kind = Literal["kwise", "pair", "online", "upo"]

# Numbers and flags are strict: YAML `true` is not the number 1, nor `1` a flag.
Positive = Annotated[float, Field(strict=True, gt=0)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Flag = Annotated[bool, Field(strict=True)]


def _mixture_weight(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(
            f"must be in [0, 1] (the reference's weight in the sampling mixture), got {value}"
        )
    return value


MixtureWeight = Annotated[float, Field(strict=True), AfterValidator(_mixture_weight)]


class LossParams(Strict):
    """What every loss's parameters share; subclasses fix `name` and add their keys."""

    kind: ClassVar[Kind]
    min_k: ClassVar[int] = 2  # a row needs this many valid responses to count
    ranking: ClassVar[bool] = False  # reads only the reward order: all-tied rows do not count
    token_weights: ClassVar[Literal["bmc"] | None] = None

    def params(self) -> dict[str, Any]:
        """The parameters under their YAML keys, without `name`."""
        return self.model_dump(by_alias=True, exclude={"name"})


# ---- K-wise: all responses of a prompt, labels softmax(r / alpha) --------------------------


class NCAParams(LossParams):
    """Noise Contrastive Alignment, Chen et al., arXiv 2402.05369."""

    kind: ClassVar[Kind] = "kwise"
    name: Literal["nca"] = "nca"
    beta: Positive = Field(0.01, description="the NCA README and YAML (summed log-probs)")
    alpha: Positive = Field(
        1.0,
        description="soft labels on 1-10 scores; the official code's 1e-4 gives one-hot labels",
    )
    tie_break_first: Flag = Field(
        False,
        description="the official code's +0.01 on the first response; a tie-break only "
        "at small alpha",
    )


class InfoNCAParams(NCAParams):
    """InfoNCA, same paper; same defaults as nca: the paper compares the two at equal settings."""

    name: Literal["infonca"] = "infonca"  # type: ignore[assignment]


# ---- listwise: the reward ranking of all K responses, ties unordered ------------------------


class PlackettLuceParams(LossParams):
    """Plackett-Luce over the reward ranking, Rafailov et al., arXiv 2305.18290, App. A.3."""

    kind: ClassVar[Kind] = "kwise"
    ranking: ClassVar[bool] = True
    name: Literal["plackett_luce"] = "plackett_luce"
    beta: Positive = Field(0.1, description="dpo's default: with K=2 the loss is DPO")


class LiPOParams(LossParams):
    """LiPO-lambda, Liu et al., arXiv 2402.01878."""

    kind: ClassVar[Kind] = "kwise"
    ranking: ClassVar[bool] = True
    name: Literal["lipo"] = "lipo"
    beta: Positive = Field(0.1, description="dpo's default: with K=2 and normalize the loss is DPO")
    normalize: Flag = Field(
        True,
        description="each row's lambda weights sum to 1, so a row weighs as one DPO pair and "
        "dpo's learning rates carry over; false: the paper's raw sum",
    )


# ---- pair losses: best against worst response ----------------------------------------------


class DPOParams(LossParams):
    """Direct Preference Optimization, Rafailov et al., arXiv 2305.18290."""

    kind: ClassVar[Kind] = "pair"
    name: Literal["dpo"] = "dpo"
    beta: Positive = Field(0.1, description="TRL DPOConfig default")


class IPOParams(LossParams):
    """IPO, Azar et al., arXiv 2310.12036."""

    kind: ClassVar[Kind] = "pair"
    name: Literal["ipo"] = "ipo"
    tau: Positive = Field(0.1, description="TRL's default beta, which is IPO's tau")
    length_norm: Flag = Field(
        False,
        description="sums of log-probs; true: per-token means (TRL's ipo), which changes the "
        "scale of 1/(2 tau)",
    )


class SLiCParams(LossParams):
    """SLiC-HF hinge, Zhao et al., arXiv 2305.10425."""

    kind: ClassVar[Kind] = "pair"
    name: Literal["slic"] = "slic"
    beta: Positive = Field(0.1, description="TRL DPOConfig default for loss_type='hinge'")


class NCAPairParams(LossParams):
    """NCA on a preference pair, Chen et al., arXiv 2402.05369."""

    kind: ClassVar[Kind] = "pair"
    name: Literal["nca_pair"] = "nca_pair"
    beta: Positive = Field(0.01, description="TRL's paper index for nca_pair (NCA paper, sec. C)")


# ---- BMC: the pair loss on diff-mask-weighted log-probs of (pseudo-winner, loser) -----------


class _BMC(Strict):
    """Jiang et al., arXiv 2408.07471; the weights are applied by align/train/bmc.py."""

    token_weights: ClassVar[Literal["bmc"] | None] = "bmc"
    delta: float = Field(
        2.0,
        strict=True,
        ge=1,
        description="the official config's default; a changed token weighs at most 1 + delta",
    )
    ref_weights: Literal["reference", "policy"] = Field(
        "reference",
        description="the official code: each model's log-probs weighted by its own confidence",
    )


class DPOBMCParams(_BMC, DPOParams):
    name: Literal["dpo_bmc"] = "dpo_bmc"  # type: ignore[assignment]


class IPOBMCParams(_BMC, IPOParams):
    name: Literal["ipo_bmc"] = "ipo_bmc"  # type: ignore[assignment]


class NCAPairBMCParams(_BMC, NCAPairParams):
    name: Literal["nca_pair_bmc"] = "nca_pair_bmc"  # type: ignore[assignment]


# ---- online: a pair sampled per prompt every step, labelled p = P(y > y') ------------------
# tau is the KL strength, beta the reference's weight in the sampling mixture; the defaults are
# the values Calandriello et al., arXiv 2403.08635 (IPO-MD) select.


class _Online(LossParams):
    kind: ClassVar[Kind] = "online"


class OnlineIPOParams(_Online):
    name: Literal["online_ipo"] = "online_ipo"
    tau: Positive = Field(1.0, description="the IPO-MD paper's selected KL strength")


class IPOMDParams(_Online):
    name: Literal["ipo_md"] = "ipo_md"
    tau: Positive = Field(1.0, description="the IPO-MD paper's selected KL strength")
    beta: MixtureWeight = Field(0.125, description="the IPO-MD paper's mixture weight")


class NashMDPGParams(_Online):
    name: Literal["nash_md_pg"] = "nash_md_pg"
    tau: Positive = Field(0.008, description="the IPO-MD paper's selected KL strength")
    beta: MixtureWeight = Field(0.125, description="the IPO-MD paper's mixture weight")


class OnlineDPOParams(_Online):
    name: Literal["online_dpo"] = "online_dpo"
    tau: Positive = Field(5.0, description="the IPO-MD paper's selected KL strength")


class OnlineSLiCParams(_Online):
    name: Literal["online_slic"] = "online_slic"
    tau: Positive = Field(10.0, description="the IPO-MD paper's selected KL strength")


# ---- UPO: a preference loss + advantage-weighted auxiliary reward + value head --------------

# the losses UPO can wrap
Preference = Literal["dpo", "ipo", "slic", "nca_pair", "nca", "infonca"]


class UPOParams(LossParams):
    """Unified Preference Optimization, Badrinath et al., arXiv 2405.17956.

    `preference` names the wrapped loss, which takes the keys it shares with these (beta,
    alpha, tau) and its own defaults for the others.
    """

    model_config = ConfigDict(serialize_by_alias=True)
    kind: ClassVar[Kind] = "upo"
    name: Literal["upo"] = "upo"
    preference: Preference = Field("dpo", description="the paper's main preference loss")
    beta: Positive = Field(0.1, description="the wrapped loss's beta; TRL DPOConfig default")
    alpha: Positive = Field(1.0, description="the wrapped nca/infonca's reward temperature")
    tau: Positive = Field(0.1, description="the wrapped ipo's tau; TRL's default")
    gamma: NonNegative = Field(0.5, description="the paper's weight of the auxiliary term")
    lambda_: float = Field(
        5.0, strict=True, alias="lambda", description="the paper's advantage temperature"
    )
    value_coef: NonNegative = Field(0.1, description="the paper's weight of the value loss")
    expectile: float = Field(
        0.7,
        strict=True,
        gt=0,
        lt=1,
        description="above 0.5 so V settles above the mean; the paper gives none",
    )
    aux_warmup_steps: int = Field(
        100, strict=True, ge=0, description="the value head learns first; the paper gives none"
    )
    max_weight: NonNegative = Field(
        0.0, description="0: no clip of exp(lambda * advantage), as in the paper"
    )
    value_lr: Positive = Field(
        1.0e-4,
        description="the value head's own rate: the policy's 5e-7 would leave a freshly "
        "initialised head near zero for the whole run",
    )

    def preference_params(self) -> LossParams:
        """The wrapped loss's parameters: the keys it shares with these, its defaults else."""
        model = LOSS_MODELS[self.preference]
        shared = (model.model_fields.keys() & type(self).model_fields.keys()) - {"name"}
        return model(**{k: getattr(self, k) for k in shared})


LossConfig = Annotated[
    NCAParams
    | InfoNCAParams
    | PlackettLuceParams
    | LiPOParams
    | DPOParams
    | IPOParams
    | SLiCParams
    | NCAPairParams
    | DPOBMCParams
    | IPOBMCParams
    | NCAPairBMCParams
    | OnlineIPOParams
    | IPOMDParams
    | NashMDPGParams
    | OnlineDPOParams
    | OnlineSLiCParams
    | UPOParams,
    Field(discriminator="name"),
]

# YAML name -> its parameter model
LOSS_MODELS: dict[str, type[LossParams]] = {
    m.model_fields["name"].default: m
    for m in (
        NCAParams,
        InfoNCAParams,
        PlackettLuceParams,
        LiPOParams,
        DPOParams,
        IPOParams,
        SLiCParams,
        NCAPairParams,
        DPOBMCParams,
        IPOBMCParams,
        NCAPairBMCParams,
        OnlineIPOParams,
        IPOMDParams,
        NashMDPGParams,
        OnlineDPOParams,
        OnlineSLiCParams,
        UPOParams,
    )
}

_ADAPTER: TypeAdapter[LossParams] = TypeAdapter(LossConfig)


def loss_config(name: str, **values: Any) -> LossParams:
    """The validated parameters of loss `name` (as `train.loss: {name: ..., **values}`)."""
    return _ADAPTER.validate_python({"name": name, **values})


def loss_parameters(name: str) -> list[tuple[str, Any, str]]:
    """(YAML key, default, reason for the default) of each parameter of loss `name`."""
    return [
        (field.alias or key, field.default, field.description or "")
        for key, field in LOSS_MODELS[name].model_fields.items()
        if key != "name"
    ]
