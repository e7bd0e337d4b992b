"""check_ladder (``_check``): the ladder against the order in which the forward pass reads each
parameter, on custom nnx models, JAX trees, scanned layers and every transformers Flax class."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from optax_adamwdl import LadderCheck, LadderProblem, Placement, SharedParameter, check_ladder
from tests import transformers_classes as classes
from tests.model_families import transformers

D, VOCAB, DEPTH = 8, 20, 3
IDS = jnp.zeros((2, 5), jnp.int32)


class Block(nnx.Module):
  """Pre-norm attention-like and MLP sub-layers; ``bias`` is added inside, when given."""

  def __init__(self, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(D, rngs=rngs)
    self.attn = nnx.Linear(D, D, rngs=rngs)
    self.mlp = nnx.Linear(D, D, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)

  def __call__(self, x, bias=None):
    h = self.attn(self.norm(x))
    h = h if bias is None else h + bias
    return x + self.dropout(self.mlp(jax.nn.gelu(x + h)))


class Model(nnx.Module):
  """Embeddings, an nnx.List of blocks, a final norm and a head."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.layers = nnx.List([Block(rngs) for _ in range(DEPTH)])
    self.final_norm = nnx.LayerNorm(D, rngs=rngs)
    self.head = nnx.Linear(D, 2, rngs=rngs)

  def blocks(self):
    return self.layers

  def __call__(self, ids):
    x = self.embed(ids)
    for block in self.blocks():
      x = block(x)
    return self.head(self.final_norm(x))


class Reversed(Model):
  """Runs its layers from the last index to the first."""

  def blocks(self):
    return list(self.layers)[::-1]


class ProjectedIn(Model):
  """Projects the embeddings before layer 0 with a module whose name the ladder puts on top."""

  def __init__(self, rngs: nnx.Rngs):
    super().__init__(rngs)
    self.proj_in = nnx.Linear(D, D, rngs=rngs)

  def __call__(self, ids):
    x = self.proj_in(self.embed(ids))
    for block in self.layers:
      x = block(x)
    return self.head(self.final_norm(x))


class WithAdapter(Model):
  """Has a parameter that its forward pass never reads."""

  def __init__(self, rngs: nnx.Rngs):
    super().__init__(rngs)
    self.adapter = nnx.Linear(D, D, rngs=rngs)


class Tied(Model):
  """Reads its token embedding again as the output projection, and a bias in every layer."""

  def __init__(self, rngs: nnx.Rngs):
    super().__init__(rngs)
    del self.head
    self.rel_pos_bias = nnx.Param(jnp.zeros(D))

  def __call__(self, ids):
    x = self.embed(ids)
    for block in self.layers:
      x = block(x, self.rel_pos_bias[...])
    return self.embed.attend(self.final_norm(x))


def _model(cls=Model):
  model = cls(nnx.Rngs(0))
  model.eval()  # dropout off: the forward pass is deterministic
  return model


def _call(model, ids):
  return model(ids)


def _names(entries):
  return [e.name for e in entries]


# --- custom nnx models -----------------------------------------------------------------------


def test_a_custom_nnx_model_agrees_with_its_ladder():
  check = check_ladder(_call, _model(), IDS)
  assert isinstance(check, LadderCheck)
  assert check.ok and check == ((), (), ())
  assert str(check) == "the ladder agrees with the forward pass"


def _head_first(decay, n_layers, name):
  return decay ** (n_layers + 1) if name.startswith("head.") else 1.0


def test_the_module_its_state_and_their_shapes_check_alike():
  model = _model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  forward = lambda p, ids: nnx.merge(graphdef, p, rest)(ids)
  shapes = jax.eval_shape(lambda: params)
  assert check_ladder(forward, params, IDS).ok
  assert check_ladder(forward, shapes, jax.ShapeDtypeStruct(IDS.shape, IDS.dtype)).ok
  by_module = check_ladder(_call, model, IDS, set_param_lr_fun=_head_first)
  assert by_module == check_ladder(forward, shapes, IDS, set_param_lr_fun=_head_first)
  assert by_module.problems


def test_a_head_placed_at_the_bottom_is_a_problem():
  check = check_ladder(_call, _model(), IDS, set_param_lr_fun=_head_first)
  assert not check.ok and not check.shared and not check.unused
  assert _names(check.problems) == ["head.kernel", "head.bias"]
  problem = check.problems[0]
  assert isinstance(problem, LadderProblem)
  assert (problem.placement.position, problem.placement.ratio) == ("top", 0.5**4)
  assert problem.ladder == "at the top, ratio 0.0625 (custom)"
  assert problem.forward == (
    "first read after the layers; layers.2 starts before it, so it should get at least 1"
  )


def test_a_projection_before_layer_0_named_like_a_head_is_a_problem():
  check = check_ladder(_call, _model(ProjectedIn), IDS)
  assert _names(check.problems) == ["proj_in.kernel", "proj_in.bias"]
  assert check.problems[0].placement.rule == "unrecognised"
  assert check.problems[0].forward == (
    "first read before the layers; layers.0 starts after it, so it should get at most 0.125"
  )
  assert check_ladder(_call, _model(ProjectedIn), IDS, head_ratio=0.1).ok


def test_layers_run_in_reverse_order_are_problems_layer_by_layer():
  check = check_ladder(_call, _model(Reversed), IDS)
  assert _names(check.problems) == ["layers.2", "layers.1", "layers.0"]
  assert check.problems[0].ladder == "in layer 2 (layers.2), ratio 0.5 (layer)"
  assert check.problems[2].forward == (
    "first read in layers.0; layers.2 starts before it, so it should get at least 0.5"
  )
  assert check_ladder(_call, _model(Reversed), IDS, layerwise_decay=1.0).ok  # no order to break


def test_after_the_layers_head_ratio_is_enough():
  params = {
    "layers": [jnp.zeros((D, D))] * 2,
    "head": jnp.zeros((D, 2)),
    "type_embed": jnp.zeros(2),
  }

  def forward(p, x):
    for w in p["layers"]:
      x = x @ w
    return x @ p["head"] + p["type_embed"]

  check = check_ladder(forward, params, jnp.zeros(D), head_ratio=0.25)  # below layers.1's 0.5
  assert _names(check.problems) == ["type_embed"]  # an embedding's 0.125 is below even that
  assert check.problems[0].forward == (
    "first read after the layers; layers.1 starts before it, so it should get at least "
    "head_ratio, 0.25"
  )


def test_a_module_in_training_mode_draws_its_dropout_keys_while_traced():
  model = Model(nnx.Rngs(0))  # dropout on: its rng counts are traced along with the parameters
  assert check_ladder(_call, model, IDS).ok


def test_an_unread_parameter_is_unused():
  check = check_ladder(_call, _model(WithAdapter), IDS)
  assert not check.ok and not check.problems
  assert check.unused == ("adapter.bias", "adapter.kernel")
  assert str(check).splitlines() == ["never read by the forward pass (2):", "  adapter.bias",
                                     "  adapter.kernel"]  # fmt: skip


def test_tied_embeddings_and_a_bias_read_by_every_layer_are_shared_not_problems():
  check = check_ladder(_call, _model(Tied), IDS)
  assert check.ok and not check.problems
  assert _names(check.shared) == ["embed.embedding", "rel_pos_bias"]
  embed, bias = check.shared
  assert isinstance(embed, SharedParameter)
  assert embed.used_in == ("before the layers", "after the layers")
  assert bias.placement.position == "bottom"
  assert bias.used_in == ("in layers.0", "in layers.1", "in layers.2")
  assert str(check).splitlines()[1:] == [
    "shared, not checked (2):",
    "  embed.embedding: before the layers; after the layers",
    "  rel_pos_bias: in layers.0; in layers.1; in layers.2",
  ]


def test_a_parameter_shared_by_many_layers_prints_on_one_line():
  placement = Placement("rel_pos_bias", "", "bottom", 0.125, "embedding")
  shared = SharedParameter("rel_pos_bias", placement, tuple(f"in layers.{i}" for i in range(12)))
  assert str(LadderCheck((), (shared,), ())).splitlines() == [
    "the ladder agrees with the forward pass",
    "shared, not checked (1):",
    "  rel_pos_bias: in layers.0; in layers.1; in layers.2; ... in layers.11 (12 places)",
  ]


# --- pure JAX trees: scans, stacks and options -----------------------------------------------


def _scanned(extra=()):
  params = {
    "embed": jnp.zeros((VOCAB, D)),
    "layers": {"w": jnp.zeros((DEPTH, D, D)), "b": jnp.zeros((DEPTH, D))},
    "head": jnp.zeros((D, 2)),
  }
  params.update({name: jnp.zeros((DEPTH, D) if name == "gates" else (D,)) for name in extra})
  return params


def _scan_forward(reverse=False):
  def forward(p, ids):
    def body(x, layer):
      layer, gate = layer
      x = jnp.tanh(x @ layer["w"] + layer["b"] + p.get("rel_pos_bias", 0.0))
      return x * gate if gate is not None else x, None

    x = p["embed"][ids]
    x, _ = jax.lax.scan(jax.checkpoint(body), x, (p["layers"], p.get("gates")), reverse=reverse)
    return x @ p["head"]

  return forward


def test_scanned_layers_with_scan_axes():
  check = check_ladder(_scan_forward(), _scanned(), IDS, scan_axes={"layers": 0})
  assert check.ok and check == ((), (), ())


def test_a_scan_run_in_reverse_contradicts_rising_ratios():
  check = check_ladder(_scan_forward(reverse=True), _scanned(), IDS, scan_axes={"layers": 0})
  assert _names(check.problems) == ["layers"]  # both scanned leaves: the whole stack of layers
  assert check.problems[0].ladder == "in the scanned layers, ratios 0.125 to 0.5 (scan)"
  assert "ratios fall" in check.problems[0].forward


def test_a_constant_of_the_layer_scan_is_shared_and_an_unplaced_sliced_leaf_is_a_problem():
  params = _scanned(extra=("rel_pos_bias", "gates"))
  check = check_ladder(_scan_forward(), params, IDS, scan_axes={"layers": 0})
  assert [(s.name, s.used_in) for s in check.shared] == [
    ("rel_pos_bias", ("every layer of layers",))
  ]
  assert _names(check.problems) == ["gates"]
  assert "sliced per iteration of the loop over layers" in check.problems[0].forward


def test_a_while_loop_over_scanned_layers():
  def forward(p, ids, depth):
    def body(i, x):
      return jnp.tanh(x @ p["layers"]["w"][i] + p["layers"]["b"][i] + p["rel_pos_bias"])

    x = jax.lax.fori_loop(0, depth, body, p["embed"][ids])  # a traced depth: a while loop
    return x @ p["head"]

  params = _scanned(extra=("rel_pos_bias",))
  check = check_ladder(forward, params, IDS, jnp.int32(DEPTH), scan_axes={"layers": 0})
  assert check.ok and not check.problems
  assert [(s.name, s.used_in) for s in check.shared] == [
    ("rel_pos_bias", ("every layer of layers",))
  ]


def test_an_nnx_scan_over_vmapped_blocks():
  class Layer(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, x):
      return x + jax.nn.gelu(self.linear(x))

  class Scanned(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(VOCAB, D, rngs=rngs)

      @nnx.split_rngs(splits=DEPTH)
      @nnx.vmap(in_axes=0, out_axes=0)
      def blocks(rngs):
        return Layer(rngs)

      self.blocks = blocks(rngs)
      self.head = nnx.Linear(D, 2, rngs=rngs)

    def __call__(self, ids):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def step(x, block):
        return block(x)

      return self.head(step(self.embed(ids), self.blocks))

  check = check_ladder(_call, Scanned(nnx.Rngs(0)), IDS, scan_axes={"blocks": 0})
  assert check.ok and check == ((), (), ())


def test_layers_stacked_inside_the_forward_pass_then_scanned():
  params = {
    "embed": jnp.zeros((VOCAB, D)),
    "layers": [{"w": jnp.zeros((D, D))} for _ in range(DEPTH)],
    "head": jnp.zeros((D, 2)),
  }

  def forward(p, ids):
    stacked = jax.tree.map(lambda *w: jnp.stack(w), *p["layers"])
    x, _ = jax.lax.scan(lambda x, layer: (jnp.tanh(x @ layer["w"]), None), p["embed"][ids], stacked)
    return x @ p["head"]

  assert check_ladder(forward, params, IDS).ok


def test_each_stack_is_compared_with_its_own_layers():
  tower = lambda n: {"embed": jnp.zeros((VOCAB, D)), "layers": [jnp.zeros((D, D))] * n}
  params = {"encoder": tower(3), "decoder": tower(2), "lm_head": jnp.zeros((D, VOCAB))}

  offset = jnp.full((D,), 0.5)  # a constant the forward pass closes over

  def forward(p, ids, mask, bf16):
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    p = jax.tree.map(lambda w: w.astype(dtype), p)  # casts every parameter first: views
    target = p["decoder"]["embed"][ids]  # the decoder's embedding, read before the encoder runs
    memory = jnp.where(mask[..., None], p["encoder"]["embed"][ids] + offset, 0.0)
    for w in p["encoder"]["layers"]:
      memory = jnp.tanh(memory @ w)
    for w in p["decoder"]["layers"]:
      target = jnp.tanh(target @ w + memory)
    return jax.lax.cond(
      ids.sum() > 0, lambda t: t @ p["lm_head"], lambda t: -t @ p["lm_head"], target
    )

  mask = IDS >= 0
  assert check_ladder(forward, params, IDS, mask, True).ok
  check = check_ladder(forward, params, IDS, mask, False, stacks={"decoder": {"decay": 2.0}})
  assert _names(check.problems) == ["decoder.embed", "decoder.layers.0", "decoder.layers.1"]


def test_traced_hyperparameters_are_refused():
  def inside_jit(decay):
    check_ladder(_call, _model(), IDS, layerwise_decay=decay)
    return decay

  with pytest.raises(ValueError, match="concrete"):
    jax.jit(inside_jit)(0.5)


# --- Hugging Face Flax models ----------------------------------------------------------------


def _ids(length=8):
  return jax.ShapeDtypeStruct((1, length), jnp.int32)


def test_hugging_face_bert_and_gpt2():
  hf = transformers()
  small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37)
  bert = hf.FlaxBertForSequenceClassification(hf.BertConfig(**small), _do_init=False)
  check = check_ladder(lambda p, ids: bert(ids, params=p), bert.params_shape_tree, _ids())
  assert check == ((), (), ())
  config = hf.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=99, n_positions=64)
  gpt2 = hf.FlaxGPT2LMHeadModel(config, _do_init=False)
  check = check_ladder(lambda p, ids: gpt2(ids, params=p), gpt2.params_shape_tree, _ids())
  assert check.ok and _names(check.shared) == ["transformer.wte.embedding"]


# Parameters that the example inputs of tests/transformers_classes.py do not reach.
UNREAD = {
  "masked_spec_embed": "wav2vec2 reads it only with mask_time_indices",
  "embeddings.mask_token": "DINOv2 reads it only with bool_masked_pos",
  ".encoder_attn": "BART's causal LM reads its cross-attention only with encoder_hidden_states",
}
# Contradictions the check finds in the default ladder (reported, not hidden).
CONTRADICTIONS = {
  case_id: (
    "enc_to_dec_proj is outside both stacks and gets head_ratio, but the forward pass reads it "
    "after the encoder and before the decoder's first layer, whose ratio is lower"
  )
  for case_id in (
    "FlaxEncoderDecoderModel[encoder-decoder-proj]",
    "FlaxSpeechEncoderDecoderModel[speech-encoder-decoder-proj]",
    "FlaxVisionEncoderDecoderModel[vision-encoder-decoder-proj]",
  )
}


@pytest.mark.parametrize(
  "case_id",
  [
    pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=CONTRADICTIONS[i]))
    if i in CONTRADICTIONS
    else i
    for i in classes.IDS
  ],
)
def test_every_transformers_class_agrees_with_its_ladder(case_id):
  params, forward, inputs = classes.forward(classes.BY_ID[case_id])
  check = check_ladder(forward, params, *inputs)
  assert not check.problems, str(check)
  assert [n for n in check.unused if not any(part in n for part in UNREAD)] == []
