//! The AWS backend: den's tables in one DynamoDB table, its queues on SQS.
//!
//! # Table design
//!
//! Every den table lives in **one** DynamoDB table (single-table design):
//!
//! | attribute | holds |
//! |---|---|
//! | `pk` (hash key) | `<den table>#<den pk>` |
//! | `sk` (range key) | the den sort key |
//! | `a` | the item's attributes as a JSON string, so any JSON round-trips exactly |
//! | `v` | the version, bumped by every write |
//! | `exp` | expiry in milliseconds, filtered on every read |
//! | `ttl` | expiry in seconds, DynamoDB's TTL attribute, so AWS deletes expired items |
//! | `g1pk`..`g4pk`, `g1sk`..`g4sk` | keys of the generic GSIs `gsi1`..`gsi4` |
//!
//! One table because den's modules declare their tables at start and an
//! operator should provision, back up (point-in-time recovery), alarm on and
//! grant access to one resource, not one per module; den tables are
//! namespaces, not capacity units. The partition key always includes the den
//! partition key (a guild, channel or user), so a busy guild is spread over
//! its channels and users rather than one hot partition.
//!
//! Each den table may declare up to [`INDEX_SLOTS`] indexes. A registry item
//! per den table (`pk = "__den#tables"`, `sk = <den table>`) maps index names
//! to GSI slots; the slot's keys are `<den table>#<index>#<value>` and
//! `<value>\u{1}<pk>\u{1}<sk>`, so items with equal index values still sort
//! in a stable order, and an index declared later is back-filled by a scan of
//! that den table's items.
//!
//! # Queue design
//!
//! See [`queue`](SqsQueue): SQS carries the messages; a ledger of items in the
//! same DynamoDB table gives den's exact semantics on top (stale receipts,
//! dedup keys, peek, delete by id, exact receive counts).

mod dynamo;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, Projection, ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use den_core::Clock;

pub use dynamo::DynamoTable;
pub use queue::SqsQueue;

use crate::{Queue, Store, StoreError, StoreResult, SweepReport, Table, TableSpec};

/// Generic GSIs on the DynamoDB table, hence indexes per den table.
pub const INDEX_SLOTS: usize = 4;

/// Where den's AWS resources are and how to reach them.
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// The region (`eu-west-1`...), from configuration.
    pub region: String,
    /// An endpoint override: a VPC endpoint, LocalStack or moto.
    pub endpoint: Option<String>,
    /// The DynamoDB table holding every den table and the queue ledger.
    pub table: String,
    /// Prefix of SQS queue names, so several dens can share an account.
    pub queue_prefix: String,
    /// Static credentials instead of the default chain (tests).
    pub static_credentials: Option<(String, den_core::Secret)>,
    /// Whether [`AwsStore::connect`] checks that the table exists (one
    /// DescribeTable call). A Lambda cold start skips it: the first real
    /// call says the same, and the role then needs no DescribeTable grant.
    pub verify_table: bool,
}

impl AwsOptions {
    /// Options for `region` with den's default names: table `den`, no queue prefix.
    #[must_use]
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            endpoint: None,
            table: "den".into(),
            queue_prefix: String::new(),
            static_credentials: None,
            verify_table: true,
        }
    }
}

/// Loads the AWS SDK configuration: rustls with ring, the default credential
/// chain (environment, profile, web identity, ECS task role, instance
/// metadata) unless static credentials are given.
pub async fn sdk_config(options: &AwsOptions) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(options.region.clone()))
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // Long polls last up to 20 s.
                .operation_attempt_timeout(Duration::from_secs(25))
                .build(),
        );
    if let Some((id, secret)) = &options.static_credentials {
        loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            id,
            secret.expose(),
            None,
            None,
            "den-config",
        ));
    }
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint.trim_end_matches('/'));
    }
    loader.load().await
}

/// Maps an SDK error to a store error, keeping AWS's error code in the text.
pub(crate) fn aws_error<E>(what: &str, err: E) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().unwrap_or("unknown").to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    StoreError::backend(format!("{what}: {code} {message}").trim_end().to_owned(), err)
}

/// The AWS store: tables on DynamoDB, queues on SQS.
#[derive(Debug)]
pub struct AwsStore {
    options: AwsOptions,
    dynamo: aws_sdk_dynamodb::Client,
    queue: Arc<SqsQueue>,
    clock: Arc<dyn Clock>,
}

impl AwsStore {
    /// Connects and checks that the DynamoDB table exists (created by the
    /// CloudFormation template or `den aws bootstrap`).
    pub async fn connect(options: AwsOptions, clock: Arc<dyn Clock>) -> StoreResult<Self> {
        let config = sdk_config(&options).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&config);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let table = options.table.clone();
        if options.verify_table {
            Self::verify_table(&dynamo, &table).await?;
        }
        let queue = Arc::new(SqsQueue::new(dynamo.clone(), sqs, &options, clock.clone()));
        Ok(Self { options, dynamo, queue, clock })
    }

    async fn verify_table(dynamo: &aws_sdk_dynamodb::Client, table: &str) -> StoreResult<()> {
        dynamo.describe_table().table_name(table).send().await.map_err(|e| {
            if e.code() == Some("ResourceNotFoundException") {
                StoreError::new(
                    crate::StoreErrorKind::Backend,
                    format!("DynamoDB table {table:?} does not exist: deploy the template or run `den aws bootstrap`"),
                )
            } else {
                aws_error("DescribeTable", e)
            }
        })?;
        Ok(())
    }

    /// Creates the DynamoDB table (on-demand billing, the generic GSIs, TTL
    /// on `ttl`, point-in-time recovery) when it is missing; returns whether
    /// it created it. For trying den out; production uses the template.
    pub async fn bootstrap_table(options: &AwsOptions) -> StoreResult<bool> {
        let config = sdk_config(options).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&config);
        if dynamo.describe_table().table_name(&options.table).send().await.is_ok() {
            return Ok(false);
        }
        let string_attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::backend("attribute definition", e))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StoreError::backend("key schema", e))
        };
        let mut create = dynamo
            .create_table()
            .table_name(&options.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string_attr("pk")?)
            .attribute_definitions(string_attr("sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?);
        for slot in 1..=INDEX_SLOTS {
            let (pk, sk) = (format!("g{slot}pk"), format!("g{slot}sk"));
            create = create
                .attribute_definitions(string_attr(&pk)?)
                .attribute_definitions(string_attr(&sk)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(format!("gsi{slot}"))
                        .key_schema(key(&pk, KeyType::Hash)?)
                        .key_schema(key(&sk, KeyType::Range)?)
                        .projection(Projection::builder().projection_type(ProjectionType::All).build())
                        .build()
                        .map_err(|e| StoreError::backend("index", e))?,
                );
        }
        match create.send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(false),
            Err(e) => return Err(aws_error("CreateTable", e)),
        }
        for _ in 0..60 {
            let status = dynamo
                .describe_table()
                .table_name(&options.table)
                .send()
                .await
                .ok()
                .and_then(|o| o.table.and_then(|t| t.table_status));
            if status == Some(aws_sdk_dynamodb::types::TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        dynamo
            .update_time_to_live()
            .table_name(&options.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("ttl")
                    .build()
                    .map_err(|e| StoreError::backend("ttl", e))?,
            )
            .send()
            .await
            .map_err(|e| aws_error("UpdateTimeToLive", e))?;
        dynamo
            .update_continuous_backups()
            .table_name(&options.table)
            .point_in_time_recovery_specification(
                PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(true)
                    .build()
                    .map_err(|e| StoreError::backend("pitr", e))?,
            )
            .send()
            .await
            .map_err(|e| aws_error("UpdateContinuousBackups", e))?;
        Ok(true)
    }

    /// The options it was opened with.
    #[must_use]
    pub fn options(&self) -> &AwsOptions {
        &self.options
    }

    /// The SQS queue backend.
    #[must_use]
    pub fn sqs_queue(&self) -> Arc<SqsQueue> {
        self.queue.clone()
    }
}

#[async_trait]
impl Store for AwsStore {
    async fn table(&self, spec: TableSpec) -> StoreResult<Arc<dyn Table>> {
        Ok(Arc::new(DynamoTable::open(self.dynamo.clone(), &self.options.table, spec, self.clock.clone()).await?))
    }

    fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.dynamo
            .describe_table()
            .table_name(&self.options.table)
            .send()
            .await
            .map_err(|e| aws_error("DescribeTable", e))?;
        Ok(())
    }

    /// Sweeps the queue ledger only: DynamoDB's TTL deletes expired table
    /// items (reads hide them meanwhile), which is far cheaper than scanning.
    async fn sweep(&self) -> StoreResult<SweepReport> {
        let messages = self.queue.sweep_expired().await?;
        Ok(SweepReport { items: 0, messages })
    }

    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "aws region {} table {} queues {}*{}",
            self.options.region,
            self.options.table,
            self.options.queue_prefix,
            self.options.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
        )
    }
}
