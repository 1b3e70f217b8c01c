"""SigLIP's attention-pooling ("MAP") head: the `pooler_output` the InstantX Flux IP-Adapter consumes.

ComfyUI loads SigLIP so400m-patch14-384 as a CLIP vision model but drops the head (`vision_model.head.*`), so
`encode_image` gives only the post-layernorm sequence [B, 729, 1152]. transformers'
`SiglipVisionModel(...).pooler_output` is that head applied to the sequence:

    h = MultiHeadAttention(query = probe, key = value = tokens)            # one query, [B, 1, E]
    pooled = (h + fc2(gelu_tanh(fc1(LayerNorm_eps1e-6(h)))))[:, 0]        # [B, E]

The attention is `torch.nn.MultiheadAttention(E, heads, batch_first=True)`: a packed q/k/v in-projection with bias,
scaled dot-product softmax per head, out-projection with bias. Pure torch; never imports comfy.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

HEAD_PREFIX = "vision_model.head."
LAYER_NORM_EPS = 1e-6  # SiglipVisionConfig.layer_norm_eps (ComfyUI's own LayerNorms use torch's 1e-5)

# attention heads of the pooling head (= the encoder's num_attention_heads) for the released SigLIP widths;
# other widths need num_heads given
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1152: 16, 1536: 16}

# parameter name -> shape, in terms of the width E and the MLP's inner width I
_SHAPES = {
    "probe": lambda e, i: (1, 1, e),
    "attention.in_proj_weight": lambda e, i: (3 * e, e),
    "attention.in_proj_bias": lambda e, i: (3 * e,),
    "attention.out_proj.weight": lambda e, i: (e, e),
    "attention.out_proj.bias": lambda e, i: (e,),
    "layernorm.weight": lambda e, i: (e,),
    "layernorm.bias": lambda e, i: (e,),
    "mlp.fc1.weight": lambda e, i: (i, e),
    "mlp.fc1.bias": lambda e, i: (i,),
    "mlp.fc2.weight": lambda e, i: (e, i),
    "mlp.fc2.bias": lambda e, i: (e,),
}
HEAD_KEYS = tuple(_SHAPES)


class SiglipHeadError(ValueError):
    """The tensors are not a SigLIP attention-pooling head; the message names the file."""


class _PoolingAttention(nn.Module):
    """Parameters of torch.nn.MultiheadAttention (packed in-projection), under the same names."""

    def __init__(self, hidden_size):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)


class _PoolingMLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)


class SiglipPoolingHead(nn.Module):
    """SigLIP's multihead attention pooling head. State-dict keys = the checkpoint's `vision_model.head.*` keys
    without that prefix. forward: [B, N, E] tokens (post-layernorm) -> [B, E].

    The weights may be stored in any dtype and on any device: forward computes in the dtype and on the device of
    its input (float32 input -> float32 math), casting the weights as it goes, as ComfyUI's manual_cast ops do.
    """

    def __init__(self, hidden_size=1152, num_heads=16, intermediate_size=4304, eps=LAYER_NORM_EPS,
                 device=None, dtype=None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.hidden_size, self.num_heads, self.intermediate_size, self.eps = hidden_size, num_heads, intermediate_size, eps
        with torch.device(device or "cpu"):
            self.probe = nn.Parameter(torch.empty(1, 1, hidden_size))
            self.attention = _PoolingAttention(hidden_size)
            self.layernorm = nn.LayerNorm(hidden_size, eps=eps)
            self.mlp = _PoolingMLP(hidden_size, intermediate_size)
        if not self.probe.is_meta:  # random, as transformers initialises it (loaded heads replace all of it)
            nn.init.normal_(self.probe)
            nn.init.xavier_uniform_(self.attention.in_proj_weight)
            nn.init.zeros_(self.attention.in_proj_bias)
        if dtype is not None:
            self.to(dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states if hidden_states.is_floating_point() else hidden_states.float()
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"expected tokens [batch, N, {self.hidden_size}], got {list(x.shape)}")

        def w(p):
            return p.to(device=x.device, dtype=x.dtype)

        batch, tokens, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        w_q, w_k, w_v = w(self.attention.in_proj_weight).chunk(3)
        b_q, b_k, b_v = w(self.attention.in_proj_bias).chunk(3)
        probe = w(self.probe).expand(batch, 1, width)

        q = F.linear(probe, w_q, b_q).view(batch, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, d]
        k = F.linear(x, w_k, b_k).view(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        v = F.linear(x, w_v, b_v).view(batch, tokens, heads, head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))  # [B, H, 1, N]
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, 1, width)
        h = F.linear(attended, w(self.attention.out_proj.weight), w(self.attention.out_proj.bias))

        y = F.layer_norm(h, (width,), w(self.layernorm.weight), w(self.layernorm.bias), self.eps)
        y = F.linear(y, w(self.mlp.fc1.weight), w(self.mlp.fc1.bias))
        y = F.gelu(y, approximate="tanh")  # SigLIP's hidden_act "gelu_pytorch_tanh"
        y = F.linear(y, w(self.mlp.fc2.weight), w(self.mlp.fc2.bias))
        return (h + y)[:, 0]


def head_tensors(tensors: dict) -> dict:
    """The head's tensors under the module's names: `vision_model.head.X` -> `X`; a dict without any
    `vision_model.head.` key is taken to be already relative."""
    if any(k.startswith(HEAD_PREFIX) for k in tensors):
        return {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    return dict(tensors)


def head_from_state_dict(tensors: dict, name: str = "state dict", num_heads: int | None = None) -> SiglipPoolingHead:
    """Build the head around the given tensors without copying them (they keep their dtype and device).

    `tensors`: the head's tensors, with or without the `vision_model.head.` prefix (other keys of a whole
    checkpoint are ignored when the prefix is used). `num_heads`: the encoder's attention heads; by default
    taken from the width (16 for so400m's 1152). Raises SiglipHeadError naming `name` when a tensor is missing,
    extra or mis-shaped.
    """
    relative = head_tensors(tensors)
    missing = [k for k in HEAD_KEYS if k not in relative]
    if missing:
        raise SiglipHeadError(
            f"'{name}' has no complete SigLIP attention-pooling head ({HEAD_PREFIX}*): missing "
            + ", ".join(HEAD_PREFIX + k for k in missing))
    extra = sorted(set(relative) - set(HEAD_KEYS))
    if extra:
        raise SiglipHeadError(f"'{name}': unexpected tensors in the SigLIP attention-pooling head: "
                              + ", ".join(HEAD_PREFIX + k for k in extra))
    probe, fc1 = relative["probe"], relative["mlp.fc1.weight"]
    if probe.ndim != 3 or fc1.ndim != 2:
        raise SiglipHeadError(f"'{name}': {HEAD_PREFIX}probe has shape {list(probe.shape)} and {HEAD_PREFIX}mlp.fc1.weight "
                              f"{list(fc1.shape)}; expected [1, 1, width] and [inner, width]")
    width, inner = probe.shape[-1], fc1.shape[0]
    wrong = [f"{HEAD_PREFIX}{k} {list(relative[k].shape)} (expected {list(shape(width, inner))})"
             for k, shape in _SHAPES.items() if tuple(relative[k].shape) != shape(width, inner)]
    if wrong:
        raise SiglipHeadError(f"'{name}': mis-shaped SigLIP attention-pooling head tensors: " + "; ".join(wrong))
    not_float = [HEAD_PREFIX + k for k in HEAD_KEYS if not relative[k].is_floating_point()]
    if not_float:
        raise SiglipHeadError(f"'{name}': SigLIP attention-pooling head tensors are not floating point: " + ", ".join(not_float))
    if num_heads is None:
        num_heads = HEADS_BY_WIDTH.get(width)
        if num_heads is None:
            raise SiglipHeadError(f"'{name}': SigLIP width {width} is not a known one ({sorted(HEADS_BY_WIDTH)}); "
                                  "give num_heads")
    if width % num_heads:
        raise SiglipHeadError(f"'{name}': SigLIP width {width} is not a multiple of {num_heads} heads")
    head = SiglipPoolingHead(width, num_heads, inner, device="meta")
    head.load_state_dict({k: relative[k] for k in HEAD_KEYS}, strict=True, assign=True)
    return head.requires_grad_(False).eval()


__all__ = ["HEAD_KEYS", "HEAD_PREFIX", "HEADS_BY_WIDTH", "LAYER_NORM_EPS", "SiglipHeadError", "SiglipPoolingHead",
           "head_from_state_dict", "head_tensors"]
