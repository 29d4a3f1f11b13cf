"""bench.rule_engine runs both paths on the same steps and they agree (a short smoke run)."""

from bench import rule_engine
from latentguard.monitors.rules import load_rule_pack


def test_both_paths_give_the_same_hits_on_the_benchmark_steps() -> None:
    shipped = list(load_rule_pack(rule_engine.PACK.read_text(), "rules.yaml").rules)
    for rules in (shipped, rule_engine.windowed(shipped)):
        engine = rule_engine.engine_of(rules)
        for n, rows_each, prompt in ((3, 1, False), (2, 40, True)):
            steps = rule_engine.make_steps(engine, n, rows_each, 6, prompt, sigma=2.0)
            want = rule_engine.run_reference(engine, steps, n)
            got = rule_engine.run_batch(engine, steps, n)
            assert want, "the steps should make some rules fire"
            assert [h.model_dump(exclude={"at"}) for h in got] == [
                h.model_dump(exclude={"at"}) for h in want]
