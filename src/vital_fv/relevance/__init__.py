"""Relevance of each matched layer's activations for a target (SPEC §4): LRP or Guided Backpropagation.

One interface (``Relevance``), built once per run on a private deep copy of the model, so the model whose
activations are optimized is never patched or hooked. Relevance flows as a modified gradient (zennit's design):
one forward up to the target, one backward that stops at the lowest matched layer, and the "gradient" read at
each matched layer's output is its relevance.

LRP rules (zennit hooks, one table for every family):
- Conv and Linear: z+ with biases left out, so relevance is conserved (SPEC §4: "rules z+ for conv/linear"), and the
  z-rule where an output has no positive contribution (see ``ZPlusRule``).
- BatchNorm, LayerNorm, elementwise activations (ReLU, ReLU6, GELU, SiLU...), ConvNeXt's layer scale: pass-through.
  For the norms this is AttnLRP's treatment of the normalization scale as a constant; for GELU it is AttnLRP's
  identity rule.
- Average pooling and attention's value mixing: the z-rule (relevance split in proportion to each input's
  contribution); residual sums: the same with |contributions| (see ``SumRule``).
zennit has canonizers for torchvision ResNets (its residual-sum canonizer is used) but not for the functional
residual adds of timm EfficientNets, DenseNet's functional ReLU/pooling, ConvNeXt's in-place add and layer scale or
torchvision's fused ``nn.MultiheadAttention``; those are rewritten on the copy by one ``Canonizer`` per family,
which lives in the family's module (``zoo/families/``) and is found through ``zoo.registry.canonizers_for``. Attention
follows AttnLRP (Achtibat et al. 2024): softmax(q k^T) is held constant, relevance flows through the values only.
Models of other families get the generic rule table; ``conservation`` reports how well relevance is kept.

- ``canonizers``: the ``Canonizer`` base and the modules a family's rewrites use (sums, constant scales, attention)
- ``rules``: the rules as zennit hooks and the LRP / Guided Backpropagation composites
- ``engine``: ``Relevance``, the start relevance of each target kind, and the normalizations VITAL uses
"""

from .canonizers import (
    AttentionMix,
    Canonizer,
    ConstantScale,
    Gate,
    LRPSelfAttention,
    ResidualSum,
    residual_add,
)
from .engine import (
    METHODS,
    Relevance,
    RelevanceOutput,
    channel_importance,
    conservation,
    normalize_relevance,
    parse_method,
    prepare_copy,
    silent,
)
from .rules import (
    ACTIVATIONS,
    GuidedRule,
    PassRule,
    RuleHook,
    SumRule,
    ZPlusRule,
    ZRule,
    guided_composite,
    lrp_composite,
)

__all__ = [
    "ACTIVATIONS",
    "METHODS",
    "AttentionMix",
    "Canonizer",
    "ConstantScale",
    "Gate",
    "GuidedRule",
    "LRPSelfAttention",
    "PassRule",
    "Relevance",
    "RelevanceOutput",
    "ResidualSum",
    "RuleHook",
    "SumRule",
    "ZPlusRule",
    "ZRule",
    "channel_importance",
    "conservation",
    "guided_composite",
    "lrp_composite",
    "normalize_relevance",
    "parse_method",
    "prepare_copy",
    "residual_add",
    "silent",
]
