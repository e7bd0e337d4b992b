"""The default ladder on every Flax model class of transformers 4.x (tests/transformers_classes.py).

The classes are enumerated from transformers' auto mappings, not listed by
hand, and built from small configs (shapes only). For each, with decay a:
- no parameter is "unrecognised";
- the depth contract, per stack: layer positions run 0..n-1, the parameters of
  one layer share a ratio, the ratios rise with the position and the top layer
  gets a**1; every bottom parameter (rule "embedding" or "stem") gets at most
  the smallest layer ratio of its stack (of all stacks when it is outside every
  stack); every "head" gets head_ratio;
- the forward pass traces (jax.eval_shape) with the parameters' shapes.
This checks the ladder against its own contract; tests/test_families.py checks a
hand-picked subset against an independent annotation of the architectures.
"""

import functools

import jax
import pytest

from optax_adamwdl import lr_placements
from tests import transformers_classes as classes

DECAY = 0.5
HEAD_RATIO = 1.0


@functools.cache
def _placed(case):
  tree = lr_placements(classes.params(case), DECAY)
  return tuple(jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "rule")))


@pytest.fixture(params=classes.IDS)
def case(request):
  return classes.BY_ID[request.param]


def test_every_class_of_the_auto_mappings_is_built():
  mapped = classes.mapped_classes()
  assert len({model_type for model_type, _ in mapped}) >= 40
  assert len(mapped) >= 128
  built = {(c.model_type, c.cls) for c in classes.CASES}
  for pair in classes.all_classes():
    assert pair in built or pair[1] in classes.UNBUILDABLE, f"{pair} is neither built nor listed"
  assert set(classes.UNBUILDABLE) <= {name for _, name in classes.all_classes()}
  assert len(classes.IDS) == len(set(classes.IDS))


def test_nothing_is_unrecognised(case):
  unrecognised = [p.name for p in _placed(case) if p.rule == "unrecognised"]
  assert not unrecognised


def test_depth_contract(case):
  placed = _placed(case)
  layers = [p for p in placed if isinstance(p.position, int)]
  assert layers, "no layer found"
  assert {p.rule for p in layers} <= {"layer", "stage/block"}
  for stack in {p.stack for p in layers}:
    ratios: dict[int, set[float]] = {}
    for p in layers:
      if p.stack == stack:
        ratios.setdefault(p.position, set()).add(p.ratio)
    positions = sorted(ratios)
    assert positions == list(range(len(positions))), f"{stack!r}: positions {positions}"
    several = {k: r for k, r in ratios.items() if len(r) > 1}
    assert not several, f"{stack!r}: a layer with several ratios: {several}"
    ladder = [min(ratios[k]) for k in positions]
    assert ladder == sorted(set(ladder)), f"{stack!r}: not rising with the position: {ladder}"
    assert ladder[-1] == DECAY, f"{stack!r}: the top layer is not at decay**1: {ladder}"
    above = {p.name: p.ratio for p in placed
             if p.stack == stack and p.rule in ("embedding", "stem") and p.ratio > ladder[0]}  # fmt: skip
    assert not above, f"{stack!r}: bottom above the lowest layer ({ladder[0]}): {above}"
  lowest = min(p.ratio for p in layers)
  above = {p.name: p.ratio for p in placed
           if p.stack is None and p.rule in ("embedding", "stem") and p.ratio > lowest}  # fmt: skip
  assert not above, f"outside the stacks: bottom above the lowest layer ({lowest}): {above}"
  heads = {p.name: p.ratio for p in placed if p.rule == "head" and p.ratio != HEAD_RATIO}
  assert not heads, f"heads without head_ratio={HEAD_RATIO}: {heads}"
  assert {p.position for p in placed if p.rule in ("embedding", "stem")} <= {"bottom"}
  assert {p.position for p in placed if p.rule == "head"} <= {"top"}


def test_forward_traces(case):
  params, forward, inputs = classes.forward(case)
  outputs = jax.eval_shape(forward, params, *inputs)
  leaves = jax.tree.leaves(outputs)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert all(x.shape[:1] == (1,) for x in leaves if x.ndim), "a batch of one in, one out"


def _where(case_id, *names):
  """{name: (position, ratio)} of the named parameters of one case."""
  placed = {p.name: p for p in _placed(classes.BY_ID[case_id])}
  return {n: (placed[n].position, placed[n].ratio) for n in names}


def test_opt_projections_sit_below_and_above_the_layers():
  # opt-350m: embed_tokens -> project_in -> layers -> project_out -> the tied LM head.
  assert _where(
    "FlaxOPTForCausalLM[opt-proj]",
    "model.decoder.embed_tokens.embedding",
    "model.decoder.project_in.kernel",
    "model.decoder.layers.0.fc1.kernel",
    "model.decoder.layers.1.fc1.kernel",
    "model.decoder.project_out.kernel",
  ) == {
    "model.decoder.embed_tokens.embedding": ("bottom", DECAY**3),
    "model.decoder.project_in.kernel": ("bottom", DECAY**3),
    "model.decoder.layers.0.fc1.kernel": (0, DECAY**2),
    "model.decoder.layers.1.fc1.kernel": (1, DECAY),
    "model.decoder.project_out.kernel": ("top", HEAD_RATIO),
  }


@pytest.mark.parametrize(
  ("case_id", "names"),
  [
    ("FlaxDistilBertForMaskedLM[distilbert]", ["vocab_transform.kernel", "vocab_projector.bias"]),
    ("FlaxElectraForMultipleChoice[electra]", ["sequence_summary.summary.kernel"]),
    ("FlaxWav2Vec2ForPreTraining[wav2vec2]", ["quantizer.codevectors", "project_q.kernel"]),
    ("FlaxWhisperForAudioClassification[whisper]", ["projector.kernel"]),
    ("FlaxEncoderDecoderModel[encoder-decoder-proj]", ["enc_to_dec_proj.kernel"]),
    ("FlaxSpeechEncoderDecoderModel[speech-encoder-decoder-proj]", ["enc_to_dec_proj.kernel"]),
  ],
)
def test_heads_after_the_last_layer_are_at_the_top(case_id, names):
  assert set(_where(case_id, *names).values()) == {("top", HEAD_RATIO)}
