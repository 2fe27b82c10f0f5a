"""Action-conditioned video DiT: velocity prediction ``v(x_s, s, actions, condition_mask)`` on latent video.

The backbone is diffusers' ``CosmosTransformer3DModel`` used as is (3D patchify, AdaLN-LoRA, QK-norm, 3D RoPE,
condition mask as an extra input channel), so its parameter names are those of diffusers-format Cosmos
checkpoints. Actions enter the way Cosmos Predict 2.5's action-conditioned DiT adds them
(``ActionChunkConditionedMinimalV1LVGDiT`` in cosmos-predict2.5): the chunk ``[B, K, A]`` is cut into one group of
``actions_per_latent_frame`` actions per predicted latent frame, and two MLPs map each flattened group into the
timestep path of that frame:

- ``action_embed_timestep`` (Cosmos: ``action_embedder_B_D``) is added to the sinusoidal timestep embedding
  before its RMSNorm, i.e. to what becomes ``embedded_timestep`` (the input of every AdaLN modulation MLP);
- ``action_embed_adaln`` (Cosmos: ``action_embedder_B_3D``) is added to the AdaLN-LoRA vector ``temb``.

Conditioning latent frames get a zero action embedding and the per-frame timestep ``condition_frame_timestep``
(0: they are clean). Dropped actions (classifier-free guidance's unconditional branch) also get a zero action
embedding, so "unconditional" is exactly the plain video model. There is no text: cross-attention sees nothing
(see :class:`rlinf_wm.models.dit_conditioning.SkipCrossAttentionProcessor`).

The hook: diffusers computes the per-frame timestep embedding inside ``transformer.time_embed``; we replace that
module with :class:`rlinf_wm.models.dit_conditioning.ActionTimestepEmbedding`, a subclass with the same
parameters that adds the per-frame action embeddings :meth:`ActionDiT.forward` hands it for the duration of one
call.

Speed: diffusers' forward repeats each frame's AdaLN modulation for every token (3 small MLPs per block per
token). :meth:`ActionDiT._per_frame_forward` runs the same modules with the modulation computed once per frame;
benchmarks/dit_flops.py measured it >= 1.5x faster on this CPU, so it is the default. ``use_diffusers_forward =
True`` runs diffusers' own forward instead (tests check that both agree).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn as nn
from diffusers.models.transformers.transformer_cosmos import CosmosTransformer3DModel
from huggingface_hub import PyTorchModelHubMixin

from rlinf_wm.models.dit_conditioning import ActionMLP, ActionTimestepEmbedding, SkipCrossAttentionProcessor

# Presets (constructor kwargs). "tiny" is the CPU default for 64x64 frames (16 x 8 x 8 latents per frame).
# "cosmos_2b" is the shape of Cosmos Predict 2 / 2.5 2B (2048 hidden = 16 heads x 128, 28 blocks, AdaLN-LoRA 256,
# 1024-d cross-attention context, RoPE extrapolation 3x in H/W) with Cosmos' 4 actions per latent frame (Wan VAE).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        latent_channels=16,
        action_dim=4,
        actions_per_latent_frame=1,
        num_layers=4,
        num_attention_heads=4,
        attention_head_dim=48,
        mlp_ratio=4.0,
        adaln_lora_dim=64,
        text_embed_dim=32,
        patch_size=(1, 2, 2),
        max_size=(32, 64, 64),
        rope_scale=(1.0, 1.0, 1.0),
    ),
    "cosmos_2b": dict(
        latent_channels=16,
        action_dim=7,
        actions_per_latent_frame=4,
        num_layers=28,
        num_attention_heads=16,
        attention_head_dim=128,
        mlp_ratio=4.0,
        adaln_lora_dim=256,
        text_embed_dim=1024,
        patch_size=(1, 2, 2),
        max_size=(128, 240, 240),
        rope_scale=(1.0, 3.0, 3.0),
    ),
}


def _as_triple(value, name: str) -> tuple:
    values = tuple(value)
    if len(values) != 3:
        raise ValueError(f"ActionDiT {name} must have 3 entries (T, H, W), got {value!r}")
    return values


@functools.cache
def compiled_per_frame_forward():
    """``ActionDiT._per_frame_forward`` through ``torch.compile`` (inductor), built once per process.

    A plain function of (model, tensors), not a bound method stored on the model, so copies of a model never call
    the original's weights. Shapes are dynamic (``dynamic=None``: the first new batch size recompiles once into a
    size-generic kernel), since the env's batch shrinks as episodes finish. Needs a C++ compiler on CPU.
    """
    return torch.compile(ActionDiT._per_frame_forward)


class ActionDiT(nn.Module, PyTorchModelHubMixin):
    """Cosmos DiT predicting the rectified-flow velocity ``v = eps - x0`` of latent video, conditioned on actions.

    Shapes: latents ``x`` are ``[B, C, T, H, W]`` (``C = latent_channels``); ``condition_mask`` is ``[B, 1, T, H, W]``
    with 1 on the given (conditioning) latent frames, constant over ``H, W``; ``actions`` is ``[B, K, A]`` with
    ``K = actions_per_latent_frame * (number of non-conditioning latent frames)`` - every sample of a batch must
    predict the same number of frames. Actions are grouped in order: the first ``actions_per_latent_frame``
    actions drive the first predicted frame, and so on.
    """

    def __init__(
        self,
        latent_channels: int = 16,
        action_dim: int = 4,
        actions_per_latent_frame: int = 1,
        num_layers: int = 4,
        num_attention_heads: int = 4,
        attention_head_dim: int = 48,
        mlp_ratio: float = 4.0,
        adaln_lora_dim: int = 64,
        text_embed_dim: int = 32,
        patch_size: tuple[int, int, int] | list[int] = (1, 2, 2),
        max_size: tuple[int, int, int] | list[int] = (32, 64, 64),
        rope_scale: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
        extra_pos_embed_type: str | None = None,
        action_hidden_dim: int | None = None,
        condition_frame_timestep: float = 0.0,
        timestep_scale: float = 1.0,
    ) -> None:
        """
        Args:
            latent_channels: channels of the tokenizer's latents (the condition mask adds one input channel).
            action_dim: A, the size of one action.
            actions_per_latent_frame: actions per predicted latent frame (1 for a per-frame VAE, 4 for Wan 4x).
            num_layers, num_attention_heads, attention_head_dim, mlp_ratio, adaln_lora_dim: DiT shape
                (hidden size = heads x head dim).
            text_embed_dim: context size of the (unused) cross-attention, kept for Cosmos checkpoint shapes.
            patch_size: (t, h, w) patch; t must be 1 (diffusers' per-frame timesteps need it).
            max_size: largest latent (T, H, W) the RoPE tables cover.
            rope_scale: RoPE NTK extrapolation ratios (T, H, W).
            extra_pos_embed_type: None (RoPE only, as Cosmos Predict 2) or "learnable".
            action_hidden_dim: hidden width of the action MLPs (default 4 x hidden, as Cosmos).
            condition_frame_timestep: timestep fed for conditioning frames (0: clean).
            timestep_scale: multiplies s in [0, 1] before the sinusoidal embedding (Cosmos 2.5 feeds s itself).
        """
        super().__init__()
        patch_size = tuple(int(p) for p in _as_triple(patch_size, "patch_size"))
        max_size = tuple(int(m) for m in _as_triple(max_size, "max_size"))
        rope_scale = tuple(float(r) for r in _as_triple(rope_scale, "rope_scale"))
        if patch_size[0] != 1:
            raise ValueError(f"ActionDiT patch_size[0] must be 1 (per-frame timesteps and actions), got {patch_size}")
        if attention_head_dim % 2 or attention_head_dim < 12:
            # 3D RoPE splits each head into (t, h, w) bands of rotation pairs; diffusers needs each band > 2 wide
            raise ValueError(f"ActionDiT attention_head_dim must be even and >= 12 (3D RoPE), got {attention_head_dim}")
        for name, value in (("latent_channels", latent_channels), ("action_dim", action_dim),
                            ("actions_per_latent_frame", actions_per_latent_frame), ("num_layers", num_layers)):
            if int(value) < 1:
                raise ValueError(f"ActionDiT {name} must be >= 1, got {value}")

        self.latent_channels = int(latent_channels)
        self.action_dim = int(action_dim)
        self.actions_per_latent_frame = int(actions_per_latent_frame)
        self.patch_size = patch_size
        self.text_embed_dim = int(text_embed_dim)
        self.condition_frame_timestep = float(condition_frame_timestep)
        self.timestep_scale = float(timestep_scale)
        hidden_size = num_attention_heads * attention_head_dim
        self.hidden_size = hidden_size

        self.transformer = CosmosTransformer3DModel(
            in_channels=latent_channels + 1,  # + condition mask channel
            out_channels=latent_channels,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            num_layers=num_layers,
            mlp_ratio=mlp_ratio,
            text_embed_dim=text_embed_dim,
            adaln_lora_dim=adaln_lora_dim,
            max_size=max_size,
            patch_size=patch_size,
            rope_scale=rope_scale,
            concat_padding_mask=False,  # its code path needs torchvision
            extra_pos_embed_type=extra_pos_embed_type,
        )
        plain_time_embed = self.transformer.time_embed
        self.transformer.time_embed = ActionTimestepEmbedding(hidden_size, hidden_size)
        self.transformer.time_embed.load_state_dict(plain_time_embed.state_dict())
        for block in self.transformer.transformer_blocks:
            block.attn2.set_processor(SkipCrossAttentionProcessor())

        action_in = self.action_dim * self.actions_per_latent_frame
        action_hidden = int(action_hidden_dim) if action_hidden_dim else 4 * hidden_size
        self.action_embed_timestep = ActionMLP(action_in, action_hidden, hidden_size)
        self.action_embed_adaln = ActionMLP(action_in, action_hidden, 3 * hidden_size)
        # True: run diffusers' own forward (per-token modulation); False: the equivalent, faster per-frame path.
        self.use_diffusers_forward = False
        # True: the per-frame path runs through torch.compile (see compiled_per_frame_forward)
        self.compile_forward = False
        self.reset_parameters()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ActionDiT":
        if name not in PRESETS:
            raise KeyError(f"unknown ActionDiT preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Cosmos' from-scratch init: truncated normal (std 1/sqrt(fan_in), +-3 std) for every linear, zero AdaLN
        output layers; plus DiT-style zero output projection and zero action-MLP outputs, so the network starts by
        predicting v = 0 and the action path starts silent (a loaded video checkpoint is unchanged at step 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = 1.0 / math.sqrt(module.in_features)
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        transformer = self.transformer
        for block in transformer.transformer_blocks:
            for norm in (block.norm1, block.norm2, block.norm3):
                nn.init.zeros_(norm.linear_2.weight)
        nn.init.zeros_(transformer.norm_out.linear_2.weight)
        nn.init.zeros_(transformer.proj_out.weight)
        for mlp in (self.action_embed_timestep, self.action_embed_adaln):
            nn.init.zeros_(mlp.fc2.weight)
            nn.init.zeros_(mlp.fc2.bias)
        if transformer.learnable_pos_embed is not None:
            for parameter in transformer.learnable_pos_embed.parameters():
                std = 1.0 / math.sqrt(self.hidden_size)
                nn.init.trunc_normal_(parameter, std=std, a=-3 * std, b=3 * std)

    def conditioning_frames(self, condition_mask: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T, H, W]`` mask -> bool ``[B, T]``, True for conditioning frames."""
        per_frame = condition_mask[:, 0].flatten(2)
        if not torch.equal(per_frame.amax(-1), per_frame.amin(-1)):
            raise ValueError("condition_mask must be constant over H, W within each latent frame")
        return per_frame[..., 0] > 0.5

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        actions: torch.Tensor,
        condition_mask: torch.Tensor,
        drop_actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ``v = eps - x0`` for noisy latents ``x`` (conditioning frames clean) at flow time ``timestep``.

        Args:
            x: ``[B, C, T, H, W]`` latents, ``x_s = s * eps + (1 - s) * x0`` on predicted frames, clean on given ones.
            timestep: ``[B]`` flow time s in [0, 1] (1 = pure noise) of the predicted frames.
            actions: ``[B, K, A]``, normalised and scaled by the caller; ``K = actions_per_latent_frame x`` the
                number of non-conditioning frames.
            condition_mask: ``[B, 1, T, H, W]``, 1 on conditioning frames.
            drop_actions: optional bool ``[B]``; True rows ignore their actions (the unconditional branch).
        Returns:
            ``[B, C, T, H, W]`` velocity; its values on conditioning frames are meaningless.
        """
        if x.ndim != 5 or x.shape[1] != self.latent_channels:
            raise ValueError(f"ActionDiT x must be [B, {self.latent_channels}, T, H, W], got {tuple(x.shape)}")
        batch, _, num_frames, height, width = x.shape
        if height % self.patch_size[1] or width % self.patch_size[2]:
            raise ValueError(f"ActionDiT latent H, W = {height}, {width} must be divisible by patch {self.patch_size}")
        if condition_mask.shape != (batch, 1, num_frames, height, width):
            raise ValueError(
                f"ActionDiT condition_mask must be {(batch, 1, num_frames, height, width)}, got {tuple(condition_mask.shape)}"
            )
        # float32 whatever the model's dtype: bfloat16 would feed s = 0.995 as 0.996 (diffusers' Cosmos does the same)
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(f"ActionDiT timestep must be [B]={batch}, got {tuple(timestep.shape)}")

        is_conditioning = self.conditioning_frames(condition_mask)
        predicted_per_row = (~is_conditioning).sum(1)
        num_predicted = int(predicted_per_row[0]) if batch else 0
        if not bool((predicted_per_row == num_predicted).all()):
            raise ValueError("ActionDiT needs the same number of non-conditioning frames in every batch row")
        expected_actions = (batch, self.actions_per_latent_frame * num_predicted, self.action_dim)
        if actions.shape != expected_actions:
            raise ValueError(
                f"ActionDiT actions must be [B, K, A] = {expected_actions} (K = {self.actions_per_latent_frame} "
                f"actions x {num_predicted} predicted latent frames), got {tuple(actions.shape)}"
            )

        groups = actions.to(x.dtype).reshape(batch, num_predicted, self.actions_per_latent_frame * self.action_dim)
        to_timestep = self.action_embed_timestep(groups)
        to_adaln = self.action_embed_adaln(groups)
        if drop_actions is not None:
            drop_actions = torch.as_tensor(drop_actions, dtype=torch.bool, device=x.device)
            if drop_actions.shape != (batch,):
                raise ValueError(f"ActionDiT drop_actions must be bool [B]={batch}, got {tuple(drop_actions.shape)}")
            keep = (~drop_actions).to(x.dtype)[:, None, None]
            to_timestep, to_adaln = to_timestep * keep, to_adaln * keep
        # Scatter the groups onto the predicted frames (in temporal order); conditioning frames stay zero.
        predicted = ~is_conditioning
        frame_to_timestep = x.new_zeros(batch, num_frames, self.hidden_size)
        frame_to_adaln = x.new_zeros(batch, num_frames, 3 * self.hidden_size)
        frame_to_timestep[predicted] = to_timestep.reshape(-1, self.hidden_size)
        frame_to_adaln[predicted] = to_adaln.reshape(-1, 3 * self.hidden_size)

        frame_timestep = torch.where(
            is_conditioning, torch.full_like(timestep[:, None], self.condition_frame_timestep), timestep[:, None]
        ) * self.timestep_scale
        action_embeddings = (frame_to_timestep.flatten(0, 1), frame_to_adaln.flatten(0, 1))
        if self.use_diffusers_forward or self.transformer.gradient_checkpointing:
            time_embed = self.transformer.time_embed
            time_embed.pending_action_embeddings = action_embeddings
            try:
                return self.transformer(
                    hidden_states=x,
                    timestep=frame_timestep.reshape(batch, 1, num_frames, 1, 1),
                    encoder_hidden_states=x.new_zeros(batch, 1, self.text_embed_dim),
                    condition_mask=condition_mask.to(x.dtype),
                    return_dict=False,
                )[0]
            finally:
                time_embed.pending_action_embeddings = None
        per_frame_forward = compiled_per_frame_forward() if self.compile_forward else ActionDiT._per_frame_forward
        return per_frame_forward(self, x, frame_timestep, condition_mask.to(x.dtype), *action_embeddings)

    def _per_frame_forward(self, x: torch.Tensor, frame_timestep: torch.Tensor, condition_mask: torch.Tensor,
                           frame_to_timestep: torch.Tensor, frame_to_adaln: torch.Tensor):
        """diffusers' ``CosmosTransformer3DModel.forward`` (per-frame timesteps, zero text context) with the same
        modules, computing each AdaLN modulation once per latent frame and broadcasting it over that frame's tokens
        (diffusers repeats it for every token), and skipping the cross-attention branch (it adds exactly 0).
        benchmarks/dit_flops.py measured 1.66x (B=16) / 1.73x (B=64) on CPU; tests check both paths agree.
        It has no data-dependent control flow, so ``torch.compile`` takes it whole (``compile_forward``)."""
        transformer = self.transformer
        batch, _, num_frames, _, _ = x.shape
        hidden = self.hidden_size
        inputs = torch.cat([x, condition_mask], dim=1)
        rotary = transformer.rope(inputs)
        extra_pos_emb = transformer.learnable_pos_embed(inputs) if transformer.learnable_pos_embed is not None else None
        tokens = transformer.patch_embed(inputs)  # [B, T, H', W', D]
        _, post_t, post_h, post_w, _ = tokens.shape
        per_frame = post_h * post_w
        h = tokens.reshape(batch, num_frames, per_frame, hidden)
        temb, embedded = transformer.time_embed.embed(h, frame_timestep.flatten(), frame_to_timestep, frame_to_adaln)
        temb = temb.view(batch, num_frames, 1, 3 * hidden)
        activated = torch.nn.functional.silu(embedded.view(batch, num_frames, 1, hidden))
        if extra_pos_emb is not None:
            extra_pos_emb = extra_pos_emb.view(batch, num_frames, per_frame, hidden)

        def modulate(norm, states, chunks):
            params = (norm.linear_2(norm.linear_1(activated)) + temb[..., : chunks * hidden]).chunk(chunks, dim=-1)
            normed = torch.addcmul(params[0], norm.norm(states), 1 + params[1])  # norm(x) * (1 + scale) + shift
            return normed, (params[2] if chunks == 3 else None)

        for block in transformer.transformer_blocks:
            if extra_pos_emb is not None:
                h = h + extra_pos_emb
            normed, gate = modulate(block.norm1, h, 3)
            attention = block.attn1(normed.view(batch, num_frames * per_frame, hidden), image_rotary_emb=rotary)
            h = torch.addcmul(h, gate, attention.view(batch, num_frames, per_frame, hidden))
            normed, gate = modulate(block.norm3, h, 3)
            h = torch.addcmul(h, gate, block.ff(normed))
        normed, _ = modulate(transformer.norm_out, h, 2)
        out = transformer.proj_out(normed.view(batch, num_frames * per_frame, hidden))
        # unpatchify exactly as diffusers does (its output layout is (p_h, p_w, p_t, C) per token)
        p_t, p_h, p_w = self.patch_size
        out = out.unflatten(2, (p_h, p_w, p_t, -1)).unflatten(1, (post_t, post_h, post_w))
        return out.permute(0, 7, 1, 6, 2, 4, 3, 5).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        """Strict load (the mixin's default silently skips missing keys) with errors naming the file."""
        import safetensors.torch

        try:
            state_dict = safetensors.torch.load_file(model_file, device=map_location)
        except Exception as error:  # safetensors raises its own error types for truncated/corrupt files
            raise ValueError(f"cannot read ActionDiT weights {model_file}: {error}") from error
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"ActionDiT weights {model_file} do not match config.json: {error}") from error
        if missing or unexpected:
            raise ValueError(
                f"ActionDiT weights {model_file} do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        return model
