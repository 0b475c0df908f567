//! A short chaos run (`den-bench chaos`): a gateway and two workers under
//! SIGKILLs, a dropped gateway connection, a store that refuses writes,
//! Discord 500s and lost answers, and a model that hangs or cuts its stream,
//! lose and duplicate nothing.

#[test]
fn a_short_chaos_run_loses_nothing_and_does_nothing_twice() {
    let options = den_bench::chaos::ChaosOptions {
        trials: 40,
        seed: 2,
        spacing_ms: 200,
        fault_every: 4,
        den: Some(env!("CARGO_BIN_EXE_den").into()),
        log: None,
        log_level: "info".into(),
    };
    let result = den_bench::chaos::run(&options).expect("the chaos run completes");
    let report = &result["report"];
    let faults: u64 = result["faults"].as_object().unwrap().values().filter_map(serde_json::Value::as_u64).sum();
    assert!(faults >= 5, "faults were injected: {}", result["faults"]);
    assert_eq!(result["settled"], true, "the queue drained: {result:#}");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["duplicated"], 0, "{report:#}");
    assert_eq!(report["decoys_untouched"], true, "{report:#}");
    assert_eq!(report["channels_put_under_a_decoy"], 0);
    assert_eq!(report["spec_violations"], 0, "{report:#}");
}
