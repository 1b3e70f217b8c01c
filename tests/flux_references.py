"""The references for Flux IP-Adapters on diffusers' FluxTransformer2DModel (no ComfyUI, no stand-in: the CI node
tests and the real-host suite both use them).

* XLabs: diffusers' FluxIPAdapterAttnProcessor, loaded by diffusers' own `_load_ip_adapter_weights` from the file's
  tensors renamed as diffusers' FluxIPAdapterMixin renames them (4 tokens), or built by hand (16 tokens: diffusers'
  loader only knows 16 tokens at C = 4096, dit-families.md §1.5);
* InstantX: a processor written from the spec (§2.3), since diffusers has none.
"""

import copy

import torch
import torch.nn.functional as F

XLABS_PROJ = "ip_adapter_proj_model."


def xlabs_to_diffusers(sd):
    """The renaming diffusers' FluxIPAdapterMixin.load_ip_adapter applies to an XLabs file."""
    image_proj = {k[len(XLABS_PROJ):]: v for k, v in sd.items() if k.startswith(XLABS_PROJ)}
    ip_adapter = {}
    for k, v in sd.items():
        if k.startswith("double_blocks."):
            i, kind, param = k.split(".")[1], k.split(".")[3], k.split(".")[-1]
            ip_adapter[f"{i}.to_{'k' if '_k_' in kind else 'v'}_ip.{param}"] = v
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def with_xlabs_processors(diffusers_model, sd, tokens, weight):
    """A copy of the diffusers model with XLabs' processors: diffusers' loader for 4 tokens, by hand for 16."""
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    model = copy.deepcopy(diffusers_model)
    hidden, context = model.inner_dim, model.config.joint_attention_dim
    converted = xlabs_to_diffusers(sd)
    if tokens == 4:
        model._load_ip_adapter_weights(converted, low_cpu_mem_usage=False)
    else:
        procs = {}
        for i, name in enumerate(n for n in model.attn_processors if n.startswith("transformer_blocks")):
            proc = FluxIPAdapterAttnProcessor(hidden, context, num_tokens=[tokens])
            proc.load_state_dict({f"to_{kv}_ip.0.{p}": converted["ip_adapter"][f"{i}.to_{kv}_ip.{p}"]
                                  for kv in ("k", "v") for p in ("weight", "bias")})
            procs[name] = proc
        model.set_attn_processor({**model.attn_processors, **procs})
        projection = ImageProjection(image_embed_dim=768, cross_attention_dim=context, num_image_text_embeds=tokens)
        projection.load_state_dict({k.replace("proj", "image_embeds"): v for k, v in converted["image_proj"].items()})
        model.encoder_hid_proj = MultiIPAdapterImageProjection([projection])
    for proc in model.attn_processors.values():
        if isinstance(proc, FluxIPAdapterAttnProcessor):
            proc.scale = [weight]
    return model


class InstantXOracle:
    """The InstantX processor written from dit-families.md §2.3 for diffusers' FluxAttention: K RMS-normalised (eps
    1e-5, no affine), V not, pre-RoPE query; double: the image rows before to_out; single: every row."""

    def __init__(self, to_k, to_v, scale):
        self.to_k, self.to_v, self.scale = to_k, to_v, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 image_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        heads, d = attn.heads, attn.head_dim
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (heads, d)))  # [B, L, H, d]
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (heads, d)))
        v = attn.to_v(hidden_states).unflatten(-1, (heads, d))
        ip_q = q
        if encoder_hidden_states is not None:
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (heads, d)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (heads, d)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (heads, d))
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).flatten(2)
        ip_k = (image_emb @ self.to_k.T).unflatten(-1, (heads, d))
        ip_k = ip_k * torch.rsqrt(ip_k.pow(2).mean(-1, keepdim=True) + 1e-5)
        ip_v = (image_emb @ self.to_v.T).unflatten(-1, (heads, d))
        ip = F.scaled_dot_product_attention(ip_q.transpose(1, 2), ip_k.transpose(1, 2), ip_v.transpose(1, 2))
        ip = ip.transpose(1, 2).flatten(2)
        if encoder_hidden_states is None:  # single block: every row of [text; image]
            return out + self.scale * ip
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], 1)
        image = attn.to_out[1](attn.to_out[0](image + self.scale * ip))
        return image, attn.to_add_out(text)


def with_instantx_oracle(diffusers_model, sd, weight):
    model = copy.deepcopy(diffusers_model)
    names = [n for n in model.attn_processors if n.startswith("transformer_blocks")]
    names += [n for n in model.attn_processors if n.startswith("single_transformer_blocks")]
    ip = sd["ip_adapter"]
    model.set_attn_processor({name: InstantXOracle(ip[f"{j}.to_k_ip.weight"], ip[f"{j}.to_v_ip.weight"], weight)
                              for j, name in enumerate(names)})
    return model


class MaskedXLabsProcessor:
    """diffusers' XLabs processor with its image attention multiplied by a token mask [1, L_img, 1]."""

    def __init__(self, inner, token_mask):
        self.inner, self.token_mask = inner, token_mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 ip_hidden_states=None):
        image, text, ip = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                     ip_hidden_states=ip_hidden_states)
        return image, text, ip * self.token_mask


