"""The Features service over the catalog that sits next to the SAE."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from latentguard.cli.main import main as cli
from latentguard.v1 import features_pb2, features_pb2_grpc
from tests.server.fixtures import D_SAE, build_sae
from tests.server.helpers import running_sidecar


def test_features(tmp_path: Path, capsys) -> None:
    with running_sidecar(tmp_path / "d", sae_path=build_sae(tmp_path / "sae")) as s:
        stub = features_pb2_grpc.FeaturesStub(s.channel())
        page = stub.ListFeatures(features_pb2.ListFeaturesRequest(page_size=2))
        assert [f.index for f in page.features] == [3, 5] and page.total == D_SAE
        rest = stub.ListFeatures(features_pb2.ListFeaturesRequest(
            page_size=2, page_token=page.next_page_token))
        assert [f.index for f in rest.features] == [7] and not rest.next_page_token
        assert stub.GetFeature(features_pb2.GetFeatureRequest(index=7)).label == "anger"
        assert stub.GetFeature(features_pb2.GetFeatureRequest(index=8)).label == ""
        with pytest.raises(grpc.RpcError) as err:
            stub.GetFeature(features_pb2.GetFeatureRequest(index=D_SAE))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        found = stub.SearchFeatures(features_pb2.SearchFeaturesRequest(query="ANGRY"))
        assert [f.index for f in found.features] == [7]
        with pytest.raises(grpc.RpcError) as err:
            stub.SearchFeatures(features_pb2.SearchFeaturesRequest(query=" "))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert cli(["features", "search", "unsafe", "--target", s.target]) == 0
        assert "3\tunsafe code" in capsys.readouterr().out


def test_without_an_sae_features_are_a_failed_precondition(tmp_path: Path) -> None:
    with running_sidecar(tmp_path / "d") as s:
        with pytest.raises(grpc.RpcError) as err:
            features_pb2_grpc.FeaturesStub(s.channel()).ListFeatures(
                features_pb2.ListFeaturesRequest())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "LATENTGUARD_SAE_PATH" in err.value.details()
