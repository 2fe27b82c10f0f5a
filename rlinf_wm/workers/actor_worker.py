"""ActorWorker: the learner. Advantages, clipped policy-gradient epochs, weights for the rollout workers.

The losses and advantages are the pure functions of :mod:`rlinf_wm.algorithms`; this class owns the
state around them: the policy being trained, the optimizer (a separate learning rate for the value
head), the frozen reference policy (only when ``algorithm.kl_coef > 0``), the non-finite-loss guard
and CPU offloading.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import defaultdict
from typing import Any

import ray
import torch

from rlinf_wm.algorithms import (
    NonFiniteGuard,
    compute_advantages,
    flatten_valid,
    iterate_minibatches,
    policy_loss,
    value_loss,
)
from rlinf_wm.config.algorithm_schema import AlgorithmConfig
from rlinf_wm.config.embodied_schema import ActorConfig
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.workers.policy_factory import build_policy, pick_device
from rlinf_wm.workers.seeding import derive_seed
from rlinf_wm.workers.trajectory import TrajectoryBatch

VALUE_HEAD_PREFIX = "value_head."
# Returned by ``_step`` when the minibatch's approx-KL exceeds the trust region (``algorithm.target_kl``).
KL_EXCEEDED = object()

# Observations arrive as read-only views of Ray's object store; torch warns, but they are only read.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class ActorWorker:
    def __init__(
        self,
        policy_cfg: dict[str, Any],
        algorithm: AlgorithmConfig,
        actor: ActorConfig,
        seed: int,
        num_threads: int | None = None,
        use_gpu: bool = False,
        resume_policy_dir: str | None = None,
    ):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.algorithm, self.actor_cfg, self.seed = algorithm, actor, seed
        # The rollout workers sample at this temperature; old and new log-probs must be of the same distribution.
        self.temperature = float(policy_cfg.get("temperature", 1.0))
        self.device = pick_device(use_gpu)
        # The reference is the starting policy (the SFT checkpoint), also when resuming a run.
        start_cfg = dict(policy_cfg, path=resume_policy_dir) if resume_policy_dir else policy_cfg

        def build(cfg):
            # policy.path null builds a fresh model: from one seed, so the reference gets the policy's start weights
            torch.manual_seed(derive_seed(seed, "initial_policy"))
            return build_policy(cfg, device=self.device).eval()  # eval(): no dropout, as in rollouts

        self.policy = build(start_cfg)
        self.reference = build(policy_cfg).requires_grad_(False) if algorithm.uses_reference_policy else None
        if algorithm.uses_critic and getattr(self.policy, "value_head", None) is None:
            raise ValueError("algorithm.name=ppo needs a policy with a value head (policy.model.value_head=true)")

        self._freeze(actor.frozen_modules)
        trainable = [(n, p) for n, p in self.policy.named_parameters() if p.requires_grad]
        value_params = [p for n, p in trainable if n.startswith(VALUE_HEAD_PREFIX)]
        policy_params = [p for n, p in trainable if not n.startswith(VALUE_HEAD_PREFIX)]
        if not policy_params:
            raise ValueError(f"actor.frozen_modules={list(actor.frozen_modules)} freezes every policy parameter: "
                             "RL would update nothing")
        groups = [{"params": policy_params, "lr": actor.lr, "name": "policy"}]
        if value_params and algorithm.uses_critic:
            groups.append({"params": value_params, "lr": algorithm.value_lr, "name": "value"})
        self.optimizer = torch.optim.AdamW(
            groups, lr=actor.lr, betas=tuple(actor.adam_betas), eps=actor.adam_eps, weight_decay=actor.weight_decay
        )
        self.guard = NonFiniteGuard(algorithm.max_consecutive_nonfinite)
        self.num_updates = 0
        self.offloaded = False

    def _freeze(self, modules: list[str]) -> None:
        params = dict(self.policy.named_parameters())
        for module in modules:
            matched = [n for n in params if n == module or n.startswith(module + ".")]
            if not matched:
                top_level = sorted({n.split(".")[0] for n in params})
                raise ValueError(f"actor.frozen_modules: {module!r} names no module of the policy "
                                 f"(its top-level modules and parameters: {', '.join(top_level)})")
            for name in matched:
                params[name].requires_grad_(False)

    # --- weights ------------------------------------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        """CPU copies of the policy weights; Ray stores the returned dict once for every reader."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.policy.state_dict().items()}

    def save_policy(self, directory: str) -> str:
        save_model_atomic(self.policy, directory)
        return directory

    def state_dict(self) -> dict[str, Any]:
        """Learner state for a checkpoint (the weights go to the policy directory); a copy, not live tensors."""
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "consecutive_nonfinite": self.guard.consecutive,
            "total_skipped": self.guard.total_skipped,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [len(group["params"]) for group in state["optimizer"]["param_groups"]]
        current = [len(group["params"]) for group in self.optimizer.param_groups]
        if saved != current:
            raise ValueError(f"the checkpoint's optimizer trains {saved} parameters per group, this actor {current}: "
                             "resume with the actor.frozen_modules (and algorithm) the run was started with")
        self.optimizer.load_state_dict(state["optimizer"])
        self._move_optimizer_state(self.device)
        torch.set_rng_state(state["torch_rng"])
        self.guard.consecutive = int(state["consecutive_nonfinite"])
        self.guard.total_skipped = int(state["total_skipped"])
        self.num_updates = int(state["num_updates"])

    # --- offloading ---------------------------------------------------------------------------
    def offload(self) -> None:
        """Weights, reference and optimizer state to CPU (a no-op move on a CPU-only machine)."""
        self._move_all("cpu")
        self.offloaded = True

    def onload(self) -> None:
        self._move_all(self.device)
        self.offloaded = False

    def _move_all(self, device: torch.device | str) -> None:
        self.policy.to(device)
        if self.reference is not None:
            self.reference.to(device)
        self._move_optimizer_state(device)

    def _move_optimizer_state(self, device: torch.device | str) -> None:
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)

    def placement(self) -> dict[str, Any]:
        """Where the learner's tensors live (tests check the offload bookkeeping with it)."""
        optimizer_devices = {
            str(v.device) for s in self.optimizer.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"
        }
        return {
            "offloaded": self.offloaded,
            "policy_device": str(next(self.policy.parameters()).device),
            "optimizer_devices": sorted(optimizer_devices),
            "compute_device": str(self.device),
        }

    def ping(self) -> bool:
        return True

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    # --- learning -----------------------------------------------------------------------------
    def update(self, batch: TrajectoryBatch, iteration: int) -> dict[str, float]:
        """Advantages, then ``algorithm.update_epochs`` passes of minibatch steps; returns metrics."""
        if self.offloaded:
            raise RuntimeError("the actor worker is offloaded; call onload() before update()")
        start = time.perf_counter()
        algo = self.algorithm
        # Seeded per iteration: a resumed run repeats the uninterrupted one exactly.
        torch.manual_seed(derive_seed(self.seed, "actor", iteration))
        as_tensor = lambda x: None if x is None else torch.as_tensor(x)  # noqa: E731
        advantages = compute_advantages(
            algo,
            rewards=as_tensor(batch.rewards),
            terminated=as_tensor(batch.terminated),
            truncated=as_tensor(batch.truncated),
            success=as_tensor(batch.success),
            group_id=as_tensor(batch.group_ids),
            values=as_tensor(batch.values),
            next_values=as_tensor(batch.next_values),
        )
        metrics: dict[str, float] = {k: float(v) for k, v in advantages.metrics.items()}

        instruction_ids = self.policy.tokenize_instructions(batch.instructions)  # [B, L]
        chunks = batch.num_chunks
        per_chunk = {
            "images": torch.from_numpy(batch.images),
            "instruction_ids": instruction_ids[:, None].expand(-1, chunks, -1),
            "tokens": torch.from_numpy(batch.tokens),
            "old_logprobs": torch.from_numpy(batch.logprobs),
            "advantages": advantages.advantages.float(),
        }
        if algo.uses_critic:
            per_chunk["old_values"] = torch.from_numpy(batch.values)
            per_chunk["returns"] = advantages.returns.float()
        flat = flatten_valid(per_chunk, advantages.loss_mask)
        num_samples = int(advantages.loss_mask.sum())
        critic_only = algo.uses_critic and iteration < algo.critic_warmup_iterations

        sums: dict[str, float] = defaultdict(float)
        steps = skipped = 0
        kl_stopped = False
        if num_samples > 0:
            for epoch in range(algo.update_epochs):
                if kl_stopped:
                    break
                seed = derive_seed(self.seed, "minibatches", iteration, epoch)
                for minibatch in iterate_minibatches(flat, algo.minibatch_size, seed=seed):
                    step_metrics = self._step(minibatch, critic_only)
                    if step_metrics is KL_EXCEEDED:
                        kl_stopped = True
                        break
                    if step_metrics is None:
                        skipped += 1
                        continue
                    steps += 1
                    for key, value in step_metrics.items():
                        sums[key] += value
        metrics.update({key: value / steps for key, value in sums.items()} if steps else {})
        metrics.update({
            "train/actor/num_updates": float(steps),
            "train/actor/skipped_nonfinite": float(skipped),
            "train/actor/num_samples": float(num_samples),
            "train/actor/kl_early_stopped": float(kl_stopped),
            "train/actor/lr": self.optimizer.param_groups[0]["lr"],
            "time/actor_update": time.perf_counter() - start,
        })
        if algo.uses_critic:
            metrics["train/critic/lr"] = algo.value_lr
        return metrics

    def _step(self, minibatch: dict[str, torch.Tensor], critic_only: bool) -> dict[str, float] | object | None:
        """One optimizer step; None when the loss or gradient was non-finite and the step was skipped,
        ``KL_EXCEEDED`` (no step) when the policy has already left the ``target_kl`` trust region."""
        algo = self.algorithm
        mb = {k: v.to(self.device) for k, v in minibatch.items()}
        evaluation = self.policy.evaluate_tensors(mb["images"], mb["instruction_ids"], mb["tokens"], self.temperature)
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = self.reference.evaluate_tensors(
                    mb["images"], mb["instruction_ids"], mb["tokens"], self.temperature
                ).logprobs
        mask = torch.ones(mb["tokens"].shape[0], dtype=torch.bool, device=self.device)
        loss, metrics = policy_loss(
            evaluation.logprobs, mb["old_logprobs"], mb["advantages"], mask,
            entropy=evaluation.entropy, ref_logprobs=ref_logprobs, **algo.policy_loss_kwargs(),
        )
        if (algo.target_kl is not None and not critic_only
                and float(metrics["train/actor/approx_kl"]) > 1.5 * algo.target_kl):
            return KL_EXCEEDED
        if algo.uses_critic:
            critic_loss, critic_metrics = value_loss(
                evaluation.values, mb["old_values"], mb["returns"], mask, **algo.value_loss_kwargs()
            )
            metrics.update(critic_metrics)
            critic_term = algo.value_loss_coef * critic_loss
            loss = critic_term if critic_only else loss + critic_term
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
        if critic_only:
            # Warm-up: only the value head moves (AdamW skips parameters without a gradient).
            for name, param in self.policy.named_parameters():
                if not name.startswith(VALUE_HEAD_PREFIX):
                    param.grad = None
        max_norm = algo.max_grad_norm if algo.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        # One check per step over both values: a finite loss must not reset the count of NaN gradients.
        if self.guard.should_skip(loss.detach(), grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.num_updates += 1
        out = {k: float(v) for k, v in metrics.items()}
        out["train/actor/grad_norm"] = float(grad_norm)
        return out
