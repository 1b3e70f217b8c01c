"""Stand-in for comfy.model_sampling.ModelSamplingDiscrete (SD's scaled-linear schedule, eps)."""

import torch


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("log_sigmas", (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().float())

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), 0, len(self.log_sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()
