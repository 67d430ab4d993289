//! The writer prepares InfluxDB at every start: against a real influxd,
//! doing it twice is harmless and a changed retention setting is applied.

use warmhouse_devstack::Influxd;
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};

#[tokio::test]
async fn ensure_schema_is_repeatable_and_applies_changed_retention() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(dir.path()).unwrap();
    let settings = InfluxSettings::new(influxd.url(), "warmhouse");
    InfluxClient::new(settings.clone())
        .unwrap()
        .ensure_schema()
        .await
        .unwrap();
    InfluxClient::new(settings.clone())
        .unwrap()
        .ensure_schema()
        .await
        .unwrap();

    let mut changed = settings;
    changed.raw_retention = "60d".into();
    let client = InfluxClient::new(changed).unwrap();
    client.ensure_schema().await.unwrap();

    let results = client
        .query("SHOW RETENTION POLICIES ON \"warmhouse\"")
        .await
        .unwrap();
    let series = &results[0].series[0];
    let name = series.columns.iter().position(|c| c == "name").unwrap();
    let duration = series.columns.iter().position(|c| c == "duration").unwrap();
    let default = series.columns.iter().position(|c| c == "default").unwrap();
    let raw = series
        .values
        .iter()
        .find(|row| row[name] == "raw")
        .expect("raw policy");
    assert_eq!(raw[duration], "1440h0m0s");
    assert_eq!(raw[default], true);
    let rollup = series
        .values
        .iter()
        .find(|row| row[name] == "rollup_1h")
        .expect("rollup policy");
    assert_eq!(rollup[duration], "17472h0m0s");

    let cqs = client.query("SHOW CONTINUOUS QUERIES").await.unwrap();
    let text = format!("{:?}", cqs[0].series);
    assert!(
        text.contains("rollup_1h") && text.contains("RESAMPLE"),
        "{text}"
    );
}
