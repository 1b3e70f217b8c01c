"""Differential tests against the authors' code (ip-adapter 0.1.0) and diffusers, on identical weights and inputs.

Tolerances are relative errors ||ours - ref|| / ||ref|| in fp32: 1e-6 for the projection models,
1e-5 for whole-UNet outputs.
"""

import pytest
import torch
from reference_impl import comfy_key_of, import_authors, small_unet
from synthetic import VARIANTS, make_checkpoint, reduced_adapter

from ipadapter_core import (
    LAYERS,
    adapter_from_state_dict,
    decoupled_attention,
    describe,
    image_tokens,
    project_image_tokens,
    uncond_features,
)


def rel_err(ours, ref):
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


def authors_projection(spec, state):
    ip_adapter, _, resampler = import_authors()
    if spec.projection == "base":
        model = ip_adapter.ImageProjModel(spec.cross_attention_dim, spec.encoder.width, spec.num_tokens)
    elif spec.projection == "full-face":
        model = ip_adapter.MLPProjModel(spec.cross_attention_dim, spec.encoder.width)
    else:  # as IPAdapterPlus.init_proj (SD1.5) and IPAdapterPlusXL.init_proj (dim 1280, 20 heads)
        dim, heads = (768, 12) if spec.family == "sd15" else (1280, 20)
        model = resampler.Resampler(dim=dim, depth=4, dim_head=64, heads=heads, num_queries=16,
                                    embedding_dim=1280, output_dim=spec.cross_attention_dim, ff_mult=4)
    model.load_state_dict(state, strict=True)
    return model.eval()


def features_for(spec, batch, gen):
    shape = (batch, spec.encoder.width) if spec.encoder.output == "image_embeds" else (batch, 257, spec.encoder.width)
    return torch.randn(*shape, generator=gen)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_projection_equals_authors_module(variant):
    nested = make_checkpoint(variant, seed=11, dtype=torch.float32)
    spec = describe(nested, variant)
    ours = adapter_from_state_dict(nested, variant)
    ref = authors_projection(spec, nested["image_proj"])
    features = features_for(spec, 3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(features)
    got = image_tokens(ours, features)
    assert got.shape == expected.shape == (3, spec.num_tokens, spec.cross_attention_dim)
    assert rel_err(got, expected) <= 1e-6


@pytest.mark.parametrize("variant", ["sd15_base", "sdxl_bigg"])
def test_base_uncond_is_projection_of_zero_embeds(variant):
    # authors: IPAdapter.get_image_embeds -> image_proj_model(torch.zeros_like(clip_image_embeds))
    nested = make_checkpoint(variant, seed=5, dtype=torch.float32)
    spec = describe(nested)
    ref = authors_projection(spec, nested["image_proj"])
    with torch.no_grad():
        expected = ref(torch.zeros(1, spec.encoder.width))
    got = image_tokens(adapter_from_state_dict(nested), uncond_features(spec))
    assert rel_err(got, expected) <= 1e-6


def test_plus_uncond_encodes_zero_normalised_pixels():
    """The authors' IPAdapterPlus.get_image_embeds on a tiny random CLIP vision model, against ours."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    ip_adapter, _, _ = import_authors()
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=224, patch_size=14, projection_dim=1024)).eval()
    nested = make_checkpoint("sd15_plus", seed=2, dtype=torch.float32)
    spec = describe(nested)

    class Host:  # the attributes get_image_embeds reads
        device = "cpu"
        image_encoder = encoder
        image_proj_model = authors_projection(spec, nested["image_proj"])
        clip_image_processor = CLIPImageProcessor()

    image = Image.fromarray((torch.rand(240, 300, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy())
    cond_ref, uncond_ref = ip_adapter.IPAdapterPlus.get_image_embeds(Host(), image)

    def encode(pixels):
        with torch.no_grad():
            return encoder(pixels, output_hidden_states=True).hidden_states[-2]

    adapter = adapter_from_state_dict(nested)
    # the authors cast the pixels to fp16 before the encoder; do the same so only the code under test differs
    pixels = Host.clip_image_processor(images=image, return_tensors="pt").pixel_values.half().float()
    assert rel_err(image_tokens(adapter, encode(pixels)), cond_ref) <= 1e-6
    assert rel_err(image_tokens(adapter, uncond_features(spec, encode)), uncond_ref) <= 1e-6


class OurProcessor:
    """Glue that runs our core inside a diffusers attention layer, as the ComfyUI patch does.

    Like ComfyUI, it hands the core q/k/v already projected by the layer's frozen to_q/to_k/to_v.
    """

    def __init__(self, ip_k, ip_v, ip_weight):
        self.ip_k, self.ip_v, self.ip_weight = ip_k, ip_v, ip_weight

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        out = decoupled_attention(q, k, v, self.ip_k, self.ip_v, attn.heads, self.ip_weight)
        return attn.to_out[1](attn.to_out[0](out))


def _run_both(layout, variant, ip_weight):
    torch.manual_seed(0)
    _, attention_processor, _ = import_authors()
    nested = make_checkpoint(variant, seed=7, dtype=torch.float32, hidden_scale=10)
    adapter = reduced_adapter(variant, seed=7, hidden_scale=10)  # the same tensors, in our adapter
    spec = adapter.spec
    gen = torch.Generator().manual_seed(4)
    features = features_for(spec, 2, gen)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    text = torch.randn(2, 77, spec.cross_attention_dim, generator=gen)
    t = torch.tensor([500.0, 20.0])

    unet = small_unet(layout)
    with torch.no_grad():
        plain = unet(latents, t, text).sample

        # the authors' processors, loaded positionally like IPAdapter.load_ip_adapter, image tokens appended to the text
        ref_tokens = authors_projection(spec, nested["image_proj"])(features)
        procs = {}
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                procs[name] = attention_processor.AttnProcessor2_0()
            else:
                hidden = unet.get_submodule(name[: -len(".processor")]).to_q.out_features
                procs[name] = attention_processor.IPAttnProcessor2_0(
                    hidden_size=hidden, cross_attention_dim=spec.cross_attention_dim, scale=ip_weight,
                    num_tokens=spec.num_tokens)
        unet.set_attn_processor(procs)
        torch.nn.ModuleList(unet.attn_processors.values()).load_state_dict(nested["ip_adapter"], strict=True)
        reference = unet(latents, t, torch.cat([text, ref_tokens], dim=1)).sample

        # ours: every layer found through our layer map by its ComfyUI key, not by position
        tokens = image_tokens(adapter, features)
        sites = {site.patch_key if len(site.patch_key) == 3 else site.patch_key + (0,): site for site in LAYERS[spec.family]}
        procs = {}
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                procs[name] = attention_processor.AttnProcessor2_0()
            else:
                layer = adapter.ip_adapter[str(sites[comfy_key_of(name)].index)]
                ip_k, ip_v = project_image_tokens(tokens, layer.to_k_ip.weight, layer.to_v_ip.weight)
                procs[name] = OurProcessor(ip_k, ip_v, ip_weight)
        unet.set_attn_processor(procs)
        ours = unet(latents, t, text).sample
    return plain, reference, ours


@pytest.mark.parametrize("layout, variant", [("sd15", "sd15_base"), ("sd15", "sd15_plus"), ("sd15", "sd15_full"),
                                             ("sdxl", "sdxl_vith"), ("sdxl", "sdxl_plus")])
def test_unet_output_equals_authors_processors(layout, variant):
    plain, reference, ours = _run_both(layout, variant, ip_weight=0.8)
    assert rel_err(reference, plain) > 1e-3  # the adapter really changes the output
    assert rel_err(ours, reference) <= 1e-5


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_layer_map_equals_diffusers_processor_order(layout):
    unet = small_unet(layout)
    names = list(unet.attn_processors)
    attn2 = [(n, name) for n, name in enumerate(names) if name.endswith("attn2.processor")]
    assert [n for n, _ in attn2] == [site.index for site in LAYERS[layout]]  # N = 1, 3, 5, ... in walk order
    levels = len(unet.config.block_out_channels)
    for (n, name), site in zip(attn2, LAYERS[layout]):
        key = comfy_key_of(name)
        assert key[:2] == (site.block_name, site.block_id) and key[2] == site.transformer_index, name
        assert site.patch_key in (key, key[:2])
        module = unet.get_submodule(name[: -len(".processor")])
        assert module.to_q.out_features * 10 == site.hidden_size, name
        block, i = name.split(".")[0], int(name.split(".")[1]) if not name.startswith("mid") else levels - 1
        level = i if block == "down_blocks" else (levels - 1 - i if block == "up_blocks" else levels - 1)
        assert site.downsample == 2**level, name
