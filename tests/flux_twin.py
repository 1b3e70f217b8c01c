"""A tiny FLUX.1 twin: diffusers' FluxTransformer2DModel and a ComfyUI-layout Flux with the same weights.

The diffusers side is the reference (it is where diffusers' IP-Adapter processors, e.g.
`FluxIPAdapterAttnProcessor`, can be attached); the ComfyUI side is the stand-in host's
`comfy.ldm.flux.model.Flux` (or, in tests/integration/flux_host.py, the real one), where the pack's patches go.
Both take the same inputs:

- ComfyUI: a latent x [B, C, H, W] (C = 4 here), patchified 2x2 inside the model, `timestep` = sigma [B],
  `context` [B, T, context_dim], `y` (pooled) [B, vec_dim], `guidance` [B];
- diffusers: the packed latent [B, (H/2)(W/2), 4C] in `(c ph pw)` order, img_ids (0, row, col), txt_ids zeros,
  `timestep` = sigma, the same guidance, pooled_projections = y, encoder_hidden_states = context.

Both multiply sigma and guidance by 1000 before their sinusoidal embeddings. Outputs are velocities; the
diffusers one is unpacked back to [B, C, H, W].

Nothing here imports `comfy` at module level: `make_standin` / `make_pair` / `FluxModelBase` install the stand-in
host on first use, and the real-host twin reuses the diffusers half from its own process.
"""

import torch
from einops import rearrange

PATCH = 2  # ComfyUI's Flux patchifies 2x2; the diffusers model gets packed tokens (patch_size=1)

# the tiny configuration (diffusers FluxTransformer2DModel arguments): width 32 = 2 heads x 16, RoPE 4+6+6
TINY = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6),
            guidance_embeds=True)


# ---------------------------------------------------------------------------------------------------------------
# diffusers side


def randomize_(module, seed=0, bias_std=0.1):
    """Seeded weights of a sane scale: matrices N(0, 1/fan_in), norm scales N(1, 0.1), biases N(0, bias_std)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * bias_std)
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return module


def make_diffusers(seed=0, double=2, single=2, **config):
    """A tiny diffusers FluxTransformer2DModel (fp32, eval) with seeded random weights; `config` overrides TINY."""
    from diffusers import FluxTransformer2DModel

    cfg = dict(TINY, num_layers=double, num_single_layers=single, **config)
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**cfg).eval()
    return randomize_(model, seed=seed)


def comfy_params(diffusers_model):
    """FluxParams keyword arguments (ComfyUI v0.8.0 field names) for the ComfyUI twin of a diffusers Flux."""
    cfg = diffusers_model.config
    if cfg.patch_size != 1 or cfg.in_channels % (PATCH * PATCH):
        raise ValueError("the twin needs a diffusers model with patch_size=1 over packed 2x2 patches")
    out_channels = cfg.out_channels or cfg.in_channels
    return dict(in_channels=cfg.in_channels // PATCH ** 2, out_channels=out_channels // PATCH ** 2,
                vec_in_dim=cfg.pooled_projection_dim, context_in_dim=cfg.joint_attention_dim,
                hidden_size=cfg.num_attention_heads * cfg.attention_head_dim, mlp_ratio=4.0,
                num_heads=cfg.num_attention_heads, depth=cfg.num_layers, depth_single_blocks=cfg.num_single_layers,
                axes_dim=list(cfg.axes_dims_rope), theta=10000, patch_size=PATCH, qkv_bias=True,
                guidance_embed=bool(cfg.guidance_embeds), txt_ids_dims=[])


def _swap_halves(t):
    """diffusers' final AdaLayerNormContinuous emits (scale, shift); ComfyUI's LastLayer reads (shift, scale)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_comfy(state_dict, depth, depth_single_blocks):
    """A diffusers Flux state dict in ComfyUI's (BFL) names: new tensors, the input is left untouched.

    Fused projections are concatenated along the output rows: img/txt qkv = to_q|to_k|to_v (add_*_proj for the text
    stream), single-block linear1 = to_q|to_k|to_v|proj_mlp. Modulation chunk orders (shift, scale, gate) agree,
    except the final layer's, whose halves are swapped.
    """
    sd = state_dict
    out = {}

    def cat(dst, srcs):
        for end in ("weight", "bias"):
            out[f"{dst}.{end}"] = torch.cat([sd[f"{s}.{end}"] for s in srcs], dim=0).clone()

    def same(dst, src, ends=("weight", "bias")):
        for end in ends:
            out[f"{dst}.{end}"] = sd[f"{src}.{end}"].clone()

    for i in range(depth):
        d, s = f"double_blocks.{i}", f"transformer_blocks.{i}"
        cat(f"{d}.img_attn.qkv", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v"])
        cat(f"{d}.txt_attn.qkv", [f"{s}.attn.add_q_proj", f"{s}.attn.add_k_proj", f"{s}.attn.add_v_proj"])
        same(f"{d}.img_attn.proj", f"{s}.attn.to_out.0")
        same(f"{d}.txt_attn.proj", f"{s}.attn.to_add_out")
        same(f"{d}.img_mod.lin", f"{s}.norm1.linear")
        same(f"{d}.txt_mod.lin", f"{s}.norm1_context.linear")
        same(f"{d}.img_mlp.0", f"{s}.ff.net.0.proj")
        same(f"{d}.img_mlp.2", f"{s}.ff.net.2")
        same(f"{d}.txt_mlp.0", f"{s}.ff_context.net.0.proj")
        same(f"{d}.txt_mlp.2", f"{s}.ff_context.net.2")
        out[f"{d}.img_attn.norm.query_norm.scale"] = sd[f"{s}.attn.norm_q.weight"].clone()
        out[f"{d}.img_attn.norm.key_norm.scale"] = sd[f"{s}.attn.norm_k.weight"].clone()
        out[f"{d}.txt_attn.norm.query_norm.scale"] = sd[f"{s}.attn.norm_added_q.weight"].clone()
        out[f"{d}.txt_attn.norm.key_norm.scale"] = sd[f"{s}.attn.norm_added_k.weight"].clone()
    for i in range(depth_single_blocks):
        d, s = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        cat(f"{d}.linear1", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp"])
        same(f"{d}.linear2", f"{s}.proj_out")
        same(f"{d}.modulation.lin", f"{s}.norm.linear")
        out[f"{d}.norm.query_norm.scale"] = sd[f"{s}.attn.norm_q.weight"].clone()
        out[f"{d}.norm.key_norm.scale"] = sd[f"{s}.attn.norm_k.weight"].clone()
    same("img_in", "x_embedder")
    same("txt_in", "context_embedder")
    for dst, src in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
        if f"time_text_embed.{src}.linear_1.weight" in sd:
            same(f"{dst}.in_layer", f"time_text_embed.{src}.linear_1")
            same(f"{dst}.out_layer", f"time_text_embed.{src}.linear_2")
    same("final_layer.linear", "proj_out")
    for end in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{end}"] = _swap_halves(sd[f"norm_out.linear.{end}"]).clone()
    return out


# ---------------------------------------------------------------------------------------------------------------
# the stand-in host's side


def _standin():
    import standin_host  # noqa: F401  installs tests/standin as `comfy`
    import comfy.ldm.flux.model

    return comfy.ldm.flux.model


def make_standin(diffusers_model):
    """The stand-in `comfy.ldm.flux.model.Flux` (fp32, eval) holding the diffusers model's weights."""
    flux_model = _standin()
    cfg = comfy_params(diffusers_model)
    flux = flux_model.Flux(image_model="flux", **cfg).eval()
    sd = diffusers_to_comfy(diffusers_model.state_dict(), cfg["depth"], cfg["depth_single_blocks"])
    flux.load_state_dict(sd, strict=True)
    return flux


def make_pair(seed=0, double=2, single=2, **config):
    """(diffusers FluxTransformer2DModel, stand-in Flux) with the same seeded weights."""
    model = make_diffusers(seed=seed, double=double, single=single, **config)
    return model, make_standin(model)


class FluxModelBase(torch.nn.Module):
    """Plays comfy.model_base.Flux for the stand-in host: `diffusion_model`, `model_sampling` (ModelSamplingFlux
    + CONST), `apply_model` (DIFFUSION_MODEL wrappers run inside the Flux; APPLY_MODEL wrappers here)."""

    def __init__(self, flux, shift=1.15):
        super().__init__()
        _standin()
        import comfy.model_sampling as ms

        class ModelSampling(ms.ModelSamplingFlux, ms.CONST):
            pass

        self.diffusion_model = flux
        self.model_sampling = ModelSampling()
        self.model_sampling.set_parameters(shift=shift)

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        import comfy.patcher_extension as pe

        wrappers = pe.get_all_wrappers(pe.WrappersMP.APPLY_MODEL, transformer_options)
        return pe.WrapperExecutor.new_class_executor(self._apply_model, self, wrappers).execute(
            x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """As BaseModel._apply_model for Flux: timestep = sigma, returns the denoised latent x - sigma * v."""
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        dtype = self.get_dtype()
        timestep = self.model_sampling.timestep(t).float()
        extra = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}
        context = None if c_crossattn is None else c_crossattn.to(dtype)
        out = self.diffusion_model(xc.to(dtype), timestep, context=context, control=control,
                                   transformer_options=transformer_options, **extra)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)


def model_patcher(flux, shift=1.15):
    """A stand-in ModelPatcher around FluxModelBase(flux): get_model_object("diffusion_model" / "model_sampling")."""
    _standin()
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(FluxModelBase(flux, shift=shift), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def sampling_transformer_options(patcher, sigma, cond_or_uncond=(0,)):
    """The transformer_options a sampling step hands the model: model_options' (nested copy) with the patcher's
    wrappers merged in (sampler_helpers.prepare_model_patcher), plus cond_or_uncond, uuids and sigmas
    (samplers.calc_cond_batch). Works for the stand-in and the real ModelPatcher alike."""
    import comfy.patcher_extension as pe

    options = pe.merge_nested_dicts({}, patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = pe.merge_nested_dicts(options.get("wrappers", {}), patcher.wrappers)
    options.update(cond_or_uncond=list(cond_or_uncond), uuids=[None] * len(cond_or_uncond), sigmas=sigma)
    return options


def forward(patcher, x, sigma, context, y=None, guidance=3.5, cond_or_uncond=(0,)):
    """One model call as ComfyUI's sampler makes it (after loading the model); returns the DENOISED latent, as
    apply_model does (velocity = (x - denoised) / sigma, see `velocity`)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)  # the step's sigmas, [1] per latent batch row
    options = sampling_transformer_options(patcher, sigma, cond_or_uncond)
    kwargs = {"c_crossattn": context, "transformer_options": options}
    if y is not None:
        kwargs["y"] = y
    if guidance is not None:
        kwargs["guidance"] = _rows(guidance, b)
    return patcher.model.apply_model(x, sigma.repeat(b // sigma.shape[0]), **kwargs)


def velocity(x, denoised, sigma):
    """The model output back from apply_model's denoised latent (flow matching: denoised = x - sigma * v)."""
    sigma = _rows(sigma, x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))
    return (x - denoised) / sigma


# ---------------------------------------------------------------------------------------------------------------
# inputs and the two calls


def _rows(value, batch):
    """A float or a [1] / [B] tensor as a float32 tensor of `batch` rows."""
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    return t.expand(batch).clone() if t.shape[0] == 1 else t


def make_inputs(seed=1, batch=2, height=8, width=12, txt_len=7, sigma=0.6, guidance=3.5, model=None):
    """Seeded inputs: dict(x [B,4,H,W], sigma [1], context [B,T,ctx], y [B,vec], guidance [B]) sized for `model`
    (a diffusers twin; the TINY widths without one). H and W must be even."""
    cfg = model.config if model is not None else None
    channels = (cfg.in_channels if cfg else TINY["in_channels"]) // PATCH ** 2
    ctx = cfg.joint_attention_dim if cfg else TINY["joint_attention_dim"]
    vec = cfg.pooled_projection_dim if cfg else TINY["pooled_projection_dim"]
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, channels, height, width, generator=g), sigma=torch.tensor([float(sigma)]),
                context=torch.randn(batch, txt_len, ctx, generator=g), y=torch.randn(batch, vec, generator=g),
                guidance=torch.full((batch,), float(guidance)))


def pack(x):
    """[B, C, H, W] -> diffusers tokens [B, (H/2)(W/2), 4C] in (c ph pw) order (ComfyUI's process_img order)."""
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)


def unpack(tokens, height, width):
    """diffusers tokens [B, (H/2)(W/2), 4C] -> [B, C, H, W]."""
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=height // PATCH, w=width // PATCH, ph=PATCH, pw=PATCH)


def image_ids(height, width):
    """diffusers img_ids [(H/2)(W/2), 3] = (0, row, col), rows major, as ComfyUI's process_img."""
    rows = torch.arange(height // PATCH, dtype=torch.float32)
    cols = torch.arange(width // PATCH, dtype=torch.float32)
    ids = torch.zeros(len(rows), len(cols), 3)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


def run_comfy(flux, x, sigma, context, y, guidance, transformer_options=None, **kwargs):
    """ComfyUI-layout Flux (stand-in or real `comfy.ldm.flux.model.Flux`) on the twin inputs -> velocity [B,C,H,W].

    `transformer_options` is passed as given (the model writes block_type / block_index / total_blocks into it);
    None means a fresh {}. kwargs go to Flux.forward (e.g. ref_latents, control, attention_mask)."""
    b = x.shape[0]
    options = {} if transformer_options is None else transformer_options
    g = None if guidance is None else _rows(guidance, b)
    return flux(x, _rows(sigma, b), context, y=y, guidance=g, transformer_options=options, **kwargs)


def run_diffusers(model, x, sigma, context, y, guidance, joint_attention_kwargs=None):
    """diffusers FluxTransformer2DModel on the same inputs -> velocity [B,C,H,W].

    `joint_attention_kwargs` is shallow-copied (diffusers pops `ip_adapter_image_embeds` from it) and handed to the
    attention processors, e.g. {"ip_adapter_image_embeds": [...]} or {"ip_hidden_states": [...]} for
    `FluxIPAdapterAttnProcessor`."""
    b, _, h, w = x.shape
    kwargs = None if joint_attention_kwargs is None else dict(joint_attention_kwargs)
    out = model(hidden_states=pack(x), encoder_hidden_states=context, pooled_projections=y,
                timestep=_rows(sigma, b), img_ids=image_ids(h, w), txt_ids=torch.zeros(context.shape[1], 3),
                guidance=None if guidance is None else _rows(guidance, b), joint_attention_kwargs=kwargs,
                return_dict=False)[0]
    return unpack(out, h, w)


def rel_l2(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


__all__ = ["TINY", "FluxModelBase", "comfy_params", "diffusers_to_comfy", "forward", "image_ids",
           "make_diffusers", "make_inputs", "make_pair", "make_standin", "model_patcher", "pack", "randomize_",
           "rel_l2", "run_comfy", "run_diffusers", "sampling_transformer_options", "unpack", "velocity"]
