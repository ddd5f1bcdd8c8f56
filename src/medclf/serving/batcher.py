"""The micro-batcher: the texts of concurrent requests join a bounded queue, and one worker thread runs the model
on up to `max_batch` of them at a time, so the event loop never runs the model.

The wait for company is counted from the oldest queued request's arrival (as Triton's dynamic batcher counts its
queue delay): a lone request waits at most `max_wait_s` for others to join it, but under load, where the requests
queued while the last forward pass ran have waited that long already, the next pass starts at once and the model
is never left idle while texts wait."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medclf.serving.metrics import Metrics

if TYPE_CHECKING:  # the classifier (and torch) load with the model, not with this module
    from medclf.inference.classifier import Predictions


class Overloaded(Exception):
    """The queue is full (or the server is shutting down)."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future
    arrived: float
    """The event loop's clock when the request was queued."""


class MicroBatcher:
    """Collects the texts of concurrent requests and runs them through the model together."""

    def __init__(
        self, infer: Callable[[list[str]], Predictions], *, max_batch: int, max_wait_s: float, max_queue: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self.queued = 0
        self.rejected = 0
        """Requests refused because the queue was full (also counted in the metrics)."""
        self._pending: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medclf-infer")
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, texts: list[str]) -> Predictions:
        if self._closing or self.queued + len(texts) > self.max_queue:
            self.rejected += 1
            self.metrics.rejected_overload.inc()
            raise Overloaded
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop.create_future(), loop.time())
        self._pending.append(job)
        self.queued += len(texts)
        self.metrics.queue.set(self.queued)
        self._wakeup.set()
        return await job.future

    def _take(self) -> list[_Job]:
        jobs: list[_Job] = []
        n = 0
        while self._pending and (not jobs or n + len(self._pending[0].texts) <= self.max_batch):
            job = self._pending.popleft()
            n += len(job.texts)
            jobs.append(job)
        self.queued -= n
        self.metrics.queue.set(self.queued)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._pending[0].arrived + self.max_wait_s - loop.time()
            if self.queued < self.max_batch and wait > 0 and not self._closing:
                await asyncio.sleep(wait)  # let concurrent requests join the oldest one's batch
            jobs = [job for job in self._take() if not job.future.done()]  # done: the client went away
            if not jobs:
                continue
            texts = [text for job in jobs for text in job.texts]
            started = time.perf_counter()
            try:
                answers = await loop.run_in_executor(self._executor, self.infer, texts)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, as a 500
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_texts.observe(len(texts))
            self.metrics.texts.inc(len(texts))
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(answers[start : start + len(job.texts)])
                start += len(job.texts)

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
