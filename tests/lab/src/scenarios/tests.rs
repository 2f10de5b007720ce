//! Tests of the registry and of expectations.

use std::collections::BTreeSet;

use serde_json::json;

use super::{expect::*, registry::*};

#[test]
fn names_are_unique_and_lists_name_real_scenarios() {
    let names: BTreeSet<&str> = SCENARIOS.iter().map(|s| s.name).collect();
    assert_eq!(names.len(), SCENARIOS.len());
    for n in QUICK
        .iter()
        .chain(DEMO)
        .chain(KNOWN_FAILING.iter().map(|(n, _)| n))
    {
        assert!(find(n).is_some(), "{n}");
    }
    for case in 1..=5 {
        assert!(
            SCENARIOS.iter().any(|s| s.field_case == Some(case)),
            "field case {case}"
        );
    }
}

#[test]
fn select_by_name_and_prefix() {
    let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(select(&[]).unwrap().len(), SCENARIOS.len());
    let picked = select(&w(&["resume-rejected", "reneg-tls12"])).unwrap();
    let names: Vec<&str> = picked.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "resume-rejected-tls12-id",
            "resume-rejected-tls12-ticket",
            "resume-rejected-tls13-psk",
            "reneg-tls12"
        ]
    );
    assert!(select(&w(&["nope"])).is_err());
}

#[test]
fn expected_round_trips_and_checks() {
    let e = Expected {
        scenario: "x".into(),
        field_case: Some(4),
        idle_threshold_s: 2.0,
        must: vec![
            Must::new(
                "idle_close",
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2:443".parse().unwrap(),
                "server",
            )
            .gap(3.0, 0.5),
        ],
        must_not: MustNot::kinds(&["rst_after_idle"]),
    };
    assert_eq!(Expected::from_json(&e.to_json()).unwrap(), e);
    let d = |kind: &str, gap: f64| {
        json!({"kind": kind, "client": "10.0.0.1:5000", "server": "10.0.0.2:443",
               "detail": {"sender": "server", "gap_s": gap}})
    };
    assert!(e.check(&[d("idle_close", 3.2)]).is_empty());
    assert_eq!(e.check(&[d("idle_close", 3.9)]).len(), 2, "gap out, extra");
    assert_eq!(e.check(&[]).len(), 1);
    assert_eq!(
        e.check(&[d("idle_close", 3.0), d("rst_after_idle", 3.0)])
            .len(),
        2,
        "extra and must_not"
    );
    let clean = Expected {
        must: vec![],
        must_not: MustNot::Nothing,
        ..e
    };
    assert_eq!(clean.to_json()["must_not"], NO_DIAGNOSIS);
    assert_eq!(Expected::from_json(&clean.to_json()).unwrap(), clean);
    assert_eq!(clean.check(&[d("idle_close", 3.0)]).len(), 1);
}
