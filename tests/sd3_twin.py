"""A tiny SD3.5-Large twin: diffusers' SD3Transformer2DModel and a ComfyUI-layout MMDiT with the same weights.

The diffusers side is the reference (diffusers' `SD3IPAdapterJointAttnProcessor2_0` and
`IPAdapterTimeImageProjection` can be attached to it); the ComfyUI side is the stand-in host's
`comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper` (what `model_base.SD3` builds; in
tests/integration/sd3_host.py the real one), where the pack's patches go. Both take the same inputs:

- ComfyUI: a latent x [B, C, H, W] (C = 4 here), patchified 2x2 inside the model, `timesteps` = sigma * 1000 [B]
  (what `model_base.SD3` hands the MMDiT: `ModelSamplingDiscreteFlow.timestep(sigma)` = sigma * multiplier),
  `context` [B, T, joint_attention_dim], `y` (pooled) [B, pooled_projection_dim];
- diffusers: hidden_states = the same x, encoder_hidden_states = context, pooled_projections = y,
  `timestep` = sigma * 1000.

Outputs are velocities [B, C, H, W] (flow matching: denoised = x - sigma * v).

The SD3.5-Large layout: qk_norm RMSNorm, no dual attention (that is SD3.5-Medium), a pos_embed buffer, the last
block's context stream pre_only. ComfyUI's MMDiT fixes the width by its depth (hidden = 64 * depth, heads = depth,
head dim 64) and detection reads depth = x_embedder rows // 64, so the diffusers twin has attention_head_dim 64 and
caption_projection_dim = 64 * heads; the number of joint blocks may differ (`num_blocks`).

Nothing here imports `comfy` at module level: `make_standin` / `make_pair` / `SD3ModelBase` install the stand-in
host on first use, and the real-host twin reuses the diffusers half from its own process.
"""

import torch

from flux_twin import _rows, randomize_, rel_l2, sampling_transformer_options, velocity

HEAD_DIM = 64  # ComfyUI's MMDiT: hidden_size = 64 * depth, num_heads = depth
MULTIPLIER = 1000  # ModelSamplingDiscreteFlow's multiplier: the MMDiT's timestep is sigma * 1000
SHIFT = 3.0  # supported_models.SD3.sampling_settings

# the tiny configuration (diffusers SD3Transformer2DModel arguments): width 128 = 2 heads x 64, 2 joint blocks
TINY = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=HEAD_DIM,
            num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=2 * HEAD_DIM,
            pooled_projection_dim=16, out_channels=4, qk_norm="rms_norm", pos_embed_max_size=16)


# ---------------------------------------------------------------------------------------------------------------
# diffusers side


def make_diffusers(seed=0, blocks=2, heads=None, **config):
    """A tiny diffusers SD3Transformer2DModel (fp32, eval) with seeded random weights: `blocks` joint blocks,
    `heads` heads of 64 (default: as many as blocks, i.e. ComfyUI's depth = num_blocks); `config` overrides TINY.
    The sincos pos_embed buffer is kept (it is not a parameter)."""
    from diffusers import SD3Transformer2DModel

    heads = blocks if heads is None else heads
    cfg = dict(TINY, num_layers=blocks, num_attention_heads=heads, caption_projection_dim=heads * HEAD_DIM)
    cfg.update(config)
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**cfg).eval()
    return randomize_(model, seed=seed)


def unet_config(diffusers_model):
    """ComfyUI's MMDiT unet_config for the twin of a diffusers SD3 model: what `model_detection.detect_unet_config`
    gives for its converted weights (plus `num_blocks` when the block count differs from depth)."""
    cfg = diffusers_model.config
    if cfg.attention_head_dim != HEAD_DIM:
        raise ValueError(f"ComfyUI's MMDiT has head dim {HEAD_DIM} (hidden = 64 * depth); got {cfg.attention_head_dim}")
    if cfg.dual_attention_layers:
        raise ValueError("dual attention layers are SD3.5-Medium; the twin is the SD3.5-Large layout")
    if cfg.qk_norm not in ("rms_norm", None):
        raise ValueError(f"qk_norm {cfg.qk_norm!r}: ComfyUI's SD3.5 uses RMSNorm")
    depth = cfg.num_attention_heads
    out = dict(in_channels=cfg.in_channels, patch_size=cfg.patch_size, out_channels=cfg.out_channels, depth=depth,
               input_size=None, adm_in_channels=cfg.pooled_projection_dim,
               context_embedder_config={"target": "torch.nn.Linear",
                                        "params": {"in_features": cfg.joint_attention_dim,
                                                   "out_features": cfg.caption_projection_dim}},
               num_patches=cfg.pos_embed_max_size ** 2, pos_embed_max_size=cfg.pos_embed_max_size)
    if cfg.qk_norm == "rms_norm":
        out["qk_norm"] = "rms"
    out.update(pos_embed_scaling_factor=None, x_block_self_attn_layers=[])
    if cfg.num_layers != depth:
        out["num_blocks"] = cfg.num_layers
    return out


def _swap_halves(t):
    """diffusers' AdaLayerNormContinuous emits (scale, shift); ComfyUI reads (shift, scale)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_comfy(state_dict, num_blocks):
    """A diffusers SD3 state dict in ComfyUI's MMDiT names: new tensors, the input is left untouched.

    Fused projections are concatenated along the output rows: x_block.attn.qkv = to_q|to_k|to_v, context_block's =
    add_q_proj|add_k_proj|add_v_proj. AdaLayerNormZero chunk orders agree (shift, scale, gate x2); the two
    AdaLayerNormContinuous ones, the final layer's and the last block's pre_only context adaLN, have their halves
    swapped. Unlike `comfy.utils.mmdit_to_diffusers`, the pre_only block is the last of `num_blocks`, whatever the
    depth (reference dit-families.md §8).
    """
    sd = state_dict
    out = {}

    def same(dst, src, ends=("weight", "bias"), fun=lambda t: t):
        for end in ends:
            out[f"{dst}.{end}"] = fun(sd[f"{src}.{end}"]).clone()

    def cat(dst, srcs):
        for end in ("weight", "bias"):
            out[f"{dst}.{end}"] = torch.cat([sd[f"{s}.{end}"] for s in srcs], dim=0).clone()

    for i in range(num_blocks):
        d, s = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        pre_only = i == num_blocks - 1
        cat(f"{d}.x_block.attn.qkv", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v"])
        cat(f"{d}.context_block.attn.qkv", [f"{s}.attn.add_q_proj", f"{s}.attn.add_k_proj", f"{s}.attn.add_v_proj"])
        same(f"{d}.x_block.attn.proj", f"{s}.attn.to_out.0")
        same(f"{d}.x_block.adaLN_modulation.1", f"{s}.norm1.linear")
        same(f"{d}.context_block.adaLN_modulation.1", f"{s}.norm1_context.linear",
             fun=_swap_halves if pre_only else (lambda t: t))
        same(f"{d}.x_block.mlp.fc1", f"{s}.ff.net.0.proj")
        same(f"{d}.x_block.mlp.fc2", f"{s}.ff.net.2")
        if not pre_only:
            same(f"{d}.context_block.attn.proj", f"{s}.attn.to_add_out")
            same(f"{d}.context_block.mlp.fc1", f"{s}.ff_context.net.0.proj")
            same(f"{d}.context_block.mlp.fc2", f"{s}.ff_context.net.2")
        for dst, src in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                         ("context_block.attn.ln_q", "attn.norm_added_q"),
                         ("context_block.attn.ln_k", "attn.norm_added_k")):
            if f"{s}.{src}.weight" in sd:
                same(f"{d}.{dst}", f"{s}.{src}", ends=("weight",))
    same("x_embedder.proj", "pos_embed.proj")
    out["pos_embed"] = sd["pos_embed.pos_embed"].clone()
    same("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    same("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    same("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    same("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    same("context_embedder", "context_embedder")
    same("final_layer.adaLN_modulation.1", "norm_out.linear", fun=_swap_halves)
    same("final_layer.linear", "proj_out")
    return out


# ---------------------------------------------------------------------------------------------------------------
# the stand-in host's side


def _standin():
    import standin_host  # noqa: F401  installs tests/standin as `comfy`
    import comfy.ldm.modules.diffusionmodules.mmdit

    return comfy.ldm.modules.diffusionmodules.mmdit


def make_standin(diffusers_model):
    """The stand-in `OpenAISignatureMMDITWrapper` (fp32, eval) holding the diffusers model's weights."""
    mmdit = _standin()
    model = mmdit.OpenAISignatureMMDITWrapper(**unet_config(diffusers_model)).eval()
    sd = diffusers_to_comfy(diffusers_model.state_dict(), diffusers_model.config.num_layers)
    model.load_state_dict(sd, strict=True)
    return model


def make_pair(seed=0, blocks=2, heads=None, **config):
    """(diffusers SD3Transformer2DModel, stand-in MMDiT) with the same seeded weights."""
    model = make_diffusers(seed=seed, blocks=blocks, heads=heads, **config)
    return model, make_standin(model)


class SD3ModelBase(torch.nn.Module):
    """Plays comfy.model_base.SD3 for the stand-in host: `diffusion_model`, `model_sampling`
    (ModelSamplingDiscreteFlow shift 3.0, multiplier 1000 + CONST), `apply_model` (APPLY_MODEL wrappers; the MMDiT
    has no DIFFUSION_MODEL wrapper in v0.8.0)."""

    def __init__(self, mmdit, shift=SHIFT, multiplier=MULTIPLIER):
        super().__init__()
        _standin()
        import comfy.model_sampling as ms

        class ModelSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):
            pass

        self.diffusion_model = mmdit
        self.model_sampling = ModelSampling()
        self.model_sampling.set_parameters(shift=shift, multiplier=multiplier)

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        import comfy.patcher_extension as pe

        wrappers = pe.get_all_wrappers(pe.WrappersMP.APPLY_MODEL, transformer_options)
        return pe.WrapperExecutor.new_class_executor(self._apply_model, self, wrappers).execute(
            x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """As BaseModel._apply_model for SD3: timestep = model_sampling.timestep(sigma) = sigma * 1000, `y` (the
        pooled output) among the extra conds; returns the denoised latent x - sigma * v."""
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        dtype = self.get_dtype()
        timestep = self.model_sampling.timestep(t).float()
        extra = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}
        context = None if c_crossattn is None else c_crossattn.to(dtype)
        out = self.diffusion_model(xc.to(dtype), timestep, context=context, control=control,
                                   transformer_options=transformer_options, **extra)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)


def model_patcher(mmdit, shift=SHIFT):
    """A stand-in ModelPatcher around SD3ModelBase(mmdit): get_model_object("diffusion_model" / "model_sampling")."""
    _standin()
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(SD3ModelBase(mmdit, shift=shift), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def forward(patcher, x, sigma, context, y=None, cond_or_uncond=(0,)):
    """One model call as ComfyUI's sampler makes it (calc_cond_batch -> apply_model(x, sigma, c_crossattn, y,
    transformer_options)), after loading the model; returns the DENOISED latent (see `velocity`). Works for the
    stand-in and the real ModelPatcher alike."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)  # the step's sigmas, [1] per latent batch row
    options = sampling_transformer_options(patcher, sigma, cond_or_uncond)
    kwargs = {"c_crossattn": context, "transformer_options": options}
    if y is not None:
        kwargs["y"] = y
    return patcher.model.apply_model(x, sigma.repeat(b // sigma.shape[0]), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# inputs and the two calls


def make_inputs(seed=1, batch=2, height=8, width=12, txt_len=7, sigma=0.6, model=None):
    """Seeded inputs: dict(x [B,C,H,W], sigma [1], context [B,T,ctx], y [B,pooled]) sized for `model` (a diffusers
    twin; the TINY widths without one). H and W must be even and at most 2 * pos_embed_max_size."""
    cfg = model.config if model is not None else None
    channels = cfg.in_channels if cfg else TINY["in_channels"]
    ctx = cfg.joint_attention_dim if cfg else TINY["joint_attention_dim"]
    pooled = cfg.pooled_projection_dim if cfg else TINY["pooled_projection_dim"]
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, channels, height, width, generator=g), sigma=torch.tensor([float(sigma)]),
                context=torch.randn(batch, txt_len, ctx, generator=g), y=torch.randn(batch, pooled, generator=g))


def run_comfy(mmdit, x, sigma, context, y, transformer_options=None, **kwargs):
    """ComfyUI-layout MMDiT (stand-in or real `OpenAISignatureMMDITWrapper`) on the twin inputs -> velocity
    [B,C,H,W]. The MMDiT gets timesteps = sigma * 1000, as model_base.SD3 passes them. `transformer_options` is
    passed as given (None means a fresh {}); kwargs go to forward (e.g. control)."""
    b = x.shape[0]
    options = {} if transformer_options is None else transformer_options
    return mmdit(x, _rows(sigma, b) * MULTIPLIER, context=context, y=y, transformer_options=options, **kwargs)


def run_diffusers(model, x, sigma, context, y, joint_attention_kwargs=None):
    """diffusers SD3Transformer2DModel on the same inputs (timestep = sigma * 1000) -> velocity [B,C,H,W].

    `joint_attention_kwargs` is shallow-copied (diffusers pops `ip_adapter_image_embeds` from it), e.g.
    {"ip_adapter_image_embeds": e [B, T, emb]} once an SD3 IP-Adapter is loaded."""
    b = x.shape[0]
    kwargs = None if joint_attention_kwargs is None else dict(joint_attention_kwargs)
    return model(hidden_states=x, encoder_hidden_states=context, pooled_projections=y,
                 timestep=_rows(sigma, b) * MULTIPLIER, joint_attention_kwargs=kwargs, return_dict=False)[0]


def with_ip_adapter(diffusers_model, state_dict, weight):
    """A copy of the diffusers model with InstantX's SD3.5 IP-Adapter loaded by diffusers' own loader from the
    original keys (SD3IPAdapterJointAttnProcessor2_0 + IPAdapterTimeImageProjection), at scale `weight`."""
    import copy

    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    model = copy.deepcopy(diffusers_model)
    model._load_ip_adapter_weights(state_dict, low_cpu_mem_usage=False)
    for proc in model.attn_processors.values():
        if isinstance(proc, SD3IPAdapterJointAttnProcessor2_0):
            proc.scale = weight
    return model


__all__ = ["HEAD_DIM", "MULTIPLIER", "SHIFT", "SD3ModelBase", "TINY", "diffusers_to_comfy", "forward",
           "make_diffusers", "make_inputs", "make_pair", "make_standin", "model_patcher", "randomize_", "rel_l2",
           "run_comfy", "run_diffusers", "sampling_transformer_options", "unet_config", "velocity", "with_ip_adapter"]
