"""TrainingService: start or re-attach to training jobs and stream their stages; declare model specs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mlplat.api.errors import rpc_errors
from mlplat.api.specs import spec_from_message, spec_message
from mlplat.api.v1 import training_pb2, training_pb2_grpc
from mlplat.automation.jobs import JobEvent, TrainingJob
from mlplat.automation.service import Automation
from mlplat.observability.metrics import Metrics


def event_message(event: JobEvent, job: TrainingJob) -> training_pb2.TrainEvent:
    return training_pb2.TrainEvent(job_id=event.job_id, model=event.model, stage=event.stage,
                                   progress=event.progress, message=event.message, version=event.version,
                                   at=event.at, trigger=job.trigger)


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, automation: Automation, metrics: Metrics) -> None:
        self._automation = automation
        self._metrics = metrics

    async def Train(self, request: training_pb2.TrainRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[training_pb2.TrainEvent]:
        """The job runs on its own task: a client going away stops only this stream."""
        async with rpc_errors(context, "Train", self._metrics):
            if request.job_id:
                job = self._automation.job(request.job_id)
                if request.model and request.model != job.model:
                    raise ValueError(f"job {job.id} trains {job.model!r}, not {request.model!r}")
            else:
                if not request.model:
                    raise ValueError("name the model to train (or a job_id to re-attach to)")
                job = await self._automation.train(request.model, reason=request.reason)
        async for event in job.follow():
            yield event_message(event, job)

    async def DeclareModel(self, request: training_pb2.ModelSpec, context: grpc.aio.ServicerContext
                           ) -> training_pb2.ModelSpec:
        async with rpc_errors(context, "DeclareModel", self._metrics):
            spec = await self._automation.declare(spec_from_message(request))
        return spec_message(spec)

    async def ListSpecs(self, request: training_pb2.ListSpecsRequest, context: grpc.aio.ServicerContext
                        ) -> training_pb2.ListSpecsResponse:
        async with rpc_errors(context, "ListSpecs", self._metrics):
            specs = self._automation.specs()
        return training_pb2.ListSpecsResponse(specs=[spec_message(s) for s in specs.values()])
