"""The Features service: the loaded SAE's feature catalog."""

from __future__ import annotations

import grpc

from latentguard.monitors.catalog import FeatureCatalog
from latentguard.server.errors import FailedPrecondition, InvalidArgument, NotFound, grpc_errors
from latentguard.server.runtime import MonitorRuntime
from latentguard.v1 import features_pb2, features_pb2_grpc


class FeaturesService(features_pb2_grpc.FeaturesServicer):
    def __init__(self, runtime: MonitorRuntime) -> None:
        self._runtime = runtime

    def _sae(self) -> tuple[int, FeatureCatalog | None]:
        if self._runtime.sae is None:
            raise FailedPrecondition("no SAE loaded: set LATENTGUARD_SAE_PATH")
        return self._runtime.sae.d_sae, self._runtime.catalog

    def _feature(self, index: int) -> features_pb2.Feature:
        catalog = self._runtime.catalog
        entry = catalog.entries.get(index) if catalog is not None else None
        if entry is None:
            return features_pb2.Feature(index=index)
        return features_pb2.Feature(index=index, label=entry.label,
                                    description=entry.description, tags=list(entry.tags))

    @grpc_errors
    async def ListFeatures(self, request: features_pb2.ListFeaturesRequest,
                           context: grpc.aio.ServicerContext
                           ) -> features_pb2.ListFeaturesResponse:
        d_sae, catalog = self._sae()
        size = request.page_size or 100
        if size > 1000:
            raise InvalidArgument("page_size: at most 1000", field="page_size")
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            offset = -1
        if offset < 0 or len(request.page_token) > 20:
            raise InvalidArgument("page_token: not one this server issued", field="page_token")
        # Labelled features first-class: list the catalog's entries in index order.
        indexes = sorted(catalog.entries) if catalog is not None else []
        page = indexes[offset:offset + size]
        more = offset + size < len(indexes)
        return features_pb2.ListFeaturesResponse(
            features=[self._feature(i) for i in page],
            next_page_token=str(offset + size) if more else "", total=d_sae)

    @grpc_errors
    async def GetFeature(self, request: features_pb2.GetFeatureRequest,
                         context: grpc.aio.ServicerContext) -> features_pb2.Feature:
        d_sae, _ = self._sae()
        if request.index >= d_sae:
            raise NotFound(f"index: feature {request.index} does not exist (the SAE has "
                           f"{d_sae})", field="index")
        return self._feature(request.index)

    @grpc_errors
    async def SearchFeatures(self, request: features_pb2.SearchFeaturesRequest,
                             context: grpc.aio.ServicerContext
                             ) -> features_pb2.SearchFeaturesResponse:
        _, catalog = self._sae()
        if len(request.query) > 1000:
            raise InvalidArgument("query: at most 1000 characters", field="query")
        if not request.query.strip():
            raise InvalidArgument("query: required", field="query")
        limit = request.limit or 20
        if limit > 200:
            raise InvalidArgument("limit: at most 200", field="limit")
        found = catalog.search(request.query, limit) if catalog is not None else []
        return features_pb2.SearchFeaturesResponse(
            features=[self._feature(e.index) for e in found])
