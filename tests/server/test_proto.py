from latentguard.protogen import stale_files


def test_generated_code_matches_the_protos() -> None:
    assert stale_files() == [], "generated code is stale: run `make proto`"
