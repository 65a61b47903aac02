"""The scheduler side of the plugin: hand a compressed request's evicted blocks back to vLLM's
pool right after its prefill, and count its blocks by its physical length afterwards.

`CompressingScheduler` plans every request whose whole sequence is scheduled in one step (the
worker plans the same request from the same token ids, `guikv.vllm.plan`). When that step's
output comes back, the request's blocks past its kept ones are freed: the worker has compacted the
kept entries into the leading blocks during the forward. From then on `ShiftedCoordinator` makes
vLLM's block accounting see `logical tokens - shift`, so a decode step only asks for a new block
when the physical cache fills its last one. A preempted request gives all its blocks back as usual;
when it is prefilled again (prompt plus generated tokens) it is planned from the prompt of its first
whole prefill as before, with every later token kept after the prompt's kept entries, so it holds
and frees exactly the blocks it would have held without the preemption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.logger import init_logger
from vllm.v1.core.kv_cache_coordinator import KVCacheCoordinatorNoPrefixCache
from vllm.v1.core.kv_cache_utils import KVCacheBlock
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.request import Request

from guikv.models.adapters import ADAPTERS
from guikv.vllm.plan import RequestPlan, plan_request
from guikv.vllm.refusal import refused
from guikv.vllm.settings import settings_from_additional_config

logger = init_logger(f"vllm.{__name__}")
"""Under the `vllm` logger tree, so vLLM's log handler prints it."""


class ShiftedCoordinator:
    """vLLM's KV cache coordinator (no prefix caching, one full-attention group), seen through
    each compressed request's shift: block counts are asked for `tokens - shift` physical tokens.
    Every other call goes to the wrapped coordinator unchanged."""

    def __init__(self, inner: KVCacheCoordinatorNoPrefixCache) -> None:
        managers = inner.single_type_managers
        if len(managers) != 1 or type(managers[0]) is not FullAttentionManager:
            raise refused(
                "the plugin needs exactly one full-attention KV cache group, found "
                f"{', '.join(type(m).__name__ for m in managers)}"
            )
        self._inner = inner
        self.manager: FullAttentionManager = managers[0]
        self.shift: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_num_blocks_to_allocate(
        self,
        request_id: str,
        num_tokens: int,
        new_computed_blocks: tuple[Sequence[KVCacheBlock], ...],
        num_encoder_tokens: int,
        total_computed_tokens: int,
        num_local_computed_tokens: int,
        num_tokens_main_model: int,
        apply_admission_cap: bool = False,
        prefill_end: int = 0,
    ) -> int:
        """vLLM's count of blocks to add, for the request's physical length."""
        shift = self.shift.get(request_id, 0)
        return self._inner.get_num_blocks_to_allocate(
            request_id=request_id,
            num_tokens=num_tokens - shift,
            new_computed_blocks=new_computed_blocks,
            num_encoder_tokens=num_encoder_tokens,
            total_computed_tokens=total_computed_tokens - shift,
            num_local_computed_tokens=num_local_computed_tokens - shift,
            num_tokens_main_model=num_tokens_main_model - shift,
            apply_admission_cap=apply_admission_cap,
            prefill_end=prefill_end,
        )

    def allocate_new_blocks(
        self, request_id: str, num_tokens: int, num_tokens_main_model: int, num_encoder_tokens: int = 0
    ) -> tuple[list[KVCacheBlock], ...]:
        """vLLM's block allocation, for the request's physical length."""
        shift = self.shift.get(request_id, 0)
        return self._inner.allocate_new_blocks(
            request_id, num_tokens - shift, num_tokens_main_model - shift, num_encoder_tokens
        )

    def free(self, request_id: str) -> None:
        """Free all the request's blocks (finished or preempted) and forget its shift."""
        self.shift.pop(request_id, None)
        self._inner.free(request_id)

    def pop_blocks_for_free(self, request_id: str) -> list[KVCacheBlock]:
        """vLLM's deferred free of all the request's blocks; forgets its shift."""
        self.shift.pop(request_id, None)
        return self._inner.pop_blocks_for_free(request_id)

    def release(self, request_id: str, plan: RequestPlan) -> int:
        """Return the blocks past the request's kept ones to the pool (last first) and record its
        shift; the number of blocks freed."""
        blocks = self.manager.req_to_blocks[request_id]
        freed = blocks[plan.kept_blocks(self.manager.block_size) :]
        del blocks[plan.kept_blocks(self.manager.block_size) :]
        self.manager.block_pool.free_blocks(reversed(freed))
        self.shift[request_id] = plan.evicted
        return len(freed)


class CompressingScheduler(Scheduler):
    """vLLM's scheduler, freeing each compressed request's evicted blocks after its prefill (see
    the module docstring). Logs one line per request; `guikv_totals` counts them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = settings_from_additional_config(self.vllm_config.additional_config)
        if settings is None:
            raise ValueError("CompressingScheduler needs additional_config.guikv: none was given")
        coordinator = self.kv_cache_manager.coordinator
        if type(coordinator) is not KVCacheCoordinatorNoPrefixCache:
            raise refused(
                "the plugin needs vLLM's coordinator without prefix caching, got "
                f"{type(coordinator).__name__}: pass --no-enable-prefix-caching"
            )
        self.guikv_settings = settings
        self.guikv_coordinator = ShiftedCoordinator(coordinator)
        self.kv_cache_manager.coordinator = self.guikv_coordinator
        hf_config = self.vllm_config.model_config.hf_config
        self.guikv_image_token_ids = ADAPTERS[hf_config.model_type].image_token_ids(hf_config)
        self.guikv_pending: dict[str, RequestPlan] = {}
        # Per live request: its vLLM request object (vLLM may reuse the id of a finished request)
        # and the length of the prompt its first whole prefill planned.
        self.guikv_first_prompts: dict[str, tuple[Request, int]] = {}
        self.guikv_totals = {
            "requests": 0,
            "compressed": 0,
            "prompt_tokens": 0,
            "kept_tokens": 0,
            "blocks_freed": 0,
            "resumed": 0,
        }

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        """vLLM's schedule; plans every request whose whole sequence is prefilled in this step from
        the prompt of its first whole prefill and the tokens after it (a prompt given as embeddings
        has no token ids to plan from: the worker skips it too)."""
        output = super().schedule(*args, **kwargs)
        first_prompts = self.guikv_first_prompts
        for gone in [r for r, (request, _) in first_prompts.items() if self.requests.get(r) is not request]:
            del first_prompts[gone]
        for request_id, count in output.num_scheduled_tokens.items():
            request = self.requests[request_id]
            whole_prefill = count == request.num_tokens and request.num_computed_tokens == count
            if not whole_prefill or request.prompt_token_ids is None or request.prompt_embeds is not None:
                continue
            first = first_prompts.setdefault(request_id, (request, len(request.prompt_token_ids)))
            prompt_length = first[1]
            plan = plan_request(
                request.all_token_ids[:prompt_length],
                self.guikv_settings.compression,
                self.guikv_image_token_ids,
                request.num_tokens - prompt_length,
            )
            if plan.resumed:
                self.guikv_totals["resumed"] += 1
            else:
                self.guikv_totals["requests"] += 1
                self.guikv_totals["prompt_tokens"] += plan.length
                self.guikv_totals["kept_tokens"] += plan.kept
            if plan.left_whole is None:
                self.guikv_pending[request_id] = plan
            elif self.guikv_settings.log_requests:
                logger.info(
                    "guikv: request %s: %d prompt tokens kept whole (%s)",
                    request_id,
                    plan.length,
                    plan.left_whole,
                )
        return output

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        """vLLM's update; then frees the evicted blocks of the requests compressed in this step
        (a request that already finished gave all its blocks back)."""
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        pending, self.guikv_pending = self.guikv_pending, {}
        for request_id, plan in pending.items():
            request = self.requests.get(request_id)
            if request is None or request.is_finished():
                continue
            freed = self.guikv_coordinator.release(request_id, plan)
            self.guikv_totals["compressed"] += not plan.resumed
            self.guikv_totals["blocks_freed"] += freed
            if self.guikv_settings.log_requests and plan.resumed:
                logger.info(
                    "guikv: request %s resumed after preemption: %d prompt tokens, kept %d as first chosen "
                    "+ %d generated, %d blocks freed",
                    request_id,
                    plan.length,
                    plan.kept,
                    plan.generated,
                    freed,
                )
            elif self.guikv_settings.log_requests:
                totals = self.guikv_totals
                logger.info(
                    "guikv: request %s: %d prompt tokens, kept %d per layer and KV head, %d blocks freed "
                    "(totals: %d requests, %d compressed, %d blocks freed)",
                    request_id,
                    plan.length,
                    plan.kept,
                    freed,
                    totals["requests"],
                    totals["compressed"],
                    totals["blocks_freed"],
                )
        return outputs
