//! den on AWS: the store's options from `[aws]`, secrets from Secrets
//! Manager, and `den aws bootstrap`. Without the `aws` cargo feature each
//! entry point says how to get it.

use crate::config::Config;

/// Adds the keys of the `[aws] secret` (a JSON object) to `env`, below the
/// real environment: a variable already set wins. Values never reach logs.
pub async fn merge_secret(c: &Config, env: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    let Some(secret_id) = &c.aws.secret else { return Ok(()) };
    let values = fetch_secret(c, secret_id).await?;
    let mut added = Vec::new();
    for (key, value) in values {
        if !env.iter().any(|(k, _)| *k == key) {
            added.push(key.clone());
            env.push((key, value));
        }
    }
    tracing::info!(secret = %secret_id, keys = ?added, "secrets read from Secrets Manager");
    Ok(())
}

#[cfg(feature = "aws")]
async fn fetch_secret(c: &Config, secret_id: &str) -> anyhow::Result<Vec<(String, String)>> {
    use anyhow::Context as _;
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;

    let sdk = den_storage::aws::sdk_config(&options(c)).await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let out = client.get_secret_value().secret_id(secret_id).send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read secret {secret_id:?} from Secrets Manager: {} {}",
            e.code().unwrap_or("unreachable"),
            e.message().unwrap_or_default()
        )
    })?;
    let text = out.secret_string().with_context(|| format!("secret {secret_id:?} holds no text"))?;
    // The error must not echo the text: it is a secret even when malformed.
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|_| {
        anyhow::anyhow!("secret {secret_id:?} is not a JSON object like {{\"DISCORD_TOKEN\": \"...\"}}")
    })?;
    object
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(anyhow::anyhow!("secret {secret_id:?}: the value of {k} must be a string")),
        })
        .collect()
}

#[cfg(not(feature = "aws"))]
async fn fetch_secret(_: &Config, _: &str) -> anyhow::Result<Vec<(String, String)>> {
    anyhow::bail!("aws.secret needs a den built with the `aws` cargo feature (cargo build --release --features aws)")
}

/// The AWS store's options.
#[cfg(feature = "aws")]
#[must_use]
pub fn options(c: &Config) -> den_storage::aws::AwsOptions {
    let mut options = den_storage::aws::AwsOptions::new(c.aws.region.clone());
    options.endpoint = c.aws.endpoint.clone().filter(|e| !e.is_empty());
    options.table = c.aws.table.clone();
    options.queue_prefix = c.aws.queue_prefix.clone();
    options
}

/// Opens the AWS store, checking first that its table exists when `verify_table`.
#[cfg(feature = "aws")]
pub async fn open_store(c: &Config, verify_table: bool) -> anyhow::Result<std::sync::Arc<dyn den_storage::Store>> {
    let options = den_storage::aws::AwsOptions { verify_table, ..options(c) };
    let store = den_storage::aws::AwsStore::connect(options, std::sync::Arc::new(den_core::SystemClock))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the AWS store: {e}"))?;
    Ok(std::sync::Arc::new(store))
}

/// Opens the AWS store.
#[cfg(not(feature = "aws"))]
pub async fn open_store(_: &Config, _: bool) -> anyhow::Result<std::sync::Arc<dyn den_storage::Store>> {
    anyhow::bail!(
        "store.backend \"aws\" is not built into this den: build it with the `aws` cargo feature \
         (cargo build --release --features aws)"
    )
}

/// `den aws bootstrap`: creates the DynamoDB table and den's queues when
/// missing, for trying den on AWS; production deploys the template.
#[cfg(feature = "aws")]
pub async fn bootstrap(c: &Config) -> anyhow::Result<()> {
    let options = options(c);
    let created = den_storage::aws::AwsStore::bootstrap_table(&options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the DynamoDB table {}: {e}", options.table))?;
    println!(
        "DynamoDB table {}: {}",
        options.table,
        if created { "created (on-demand, TTL on `ttl`, point-in-time recovery)" } else { "already there" }
    );
    let store = open_store(c, true).await?;
    let spec = c.queue.spec(&c.worker);
    store.queue().create_queue(&spec).await.map_err(|e| anyhow::anyhow!("cannot create the job queue: {e}"))?;
    let dlq = spec.dead_letter.as_ref().map(|d| d.name.clone()).unwrap_or_default();
    println!("SQS queues {0}{1} and {0}{2}: ready", options.queue_prefix, spec.name, dlq);
    Ok(())
}

/// `den aws bootstrap` without the feature.
#[cfg(not(feature = "aws"))]
pub async fn bootstrap(_: &Config) -> anyhow::Result<()> {
    anyhow::bail!("`den aws` needs a den built with the `aws` cargo feature (cargo build --release --features aws)")
}
