//! The one diesel schema both backends share, and the three column types whose storage differs:
//! uuid, timestamp and JSON are native `uuid` / `timestamptz` / `jsonb` on PostgreSQL and `TEXT`
//! on SQLite. The `Db*` newtypes carry the per-backend conversions, delegating to diesel's own
//! impls wherever diesel has one (coherence forbids putting them on `Uuid`/`DateTime`/`Value`).

use chrono::{DateTime, Datelike, Timelike, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sqlite::{Sqlite, SqliteValue};
use serde_json::Value;
use uuid::Uuid;

/// The SQL types of the columns whose storage differs per backend.
pub mod sql_types {
    /// `uuid` on PostgreSQL, hyphenated lower-case `TEXT` on SQLite.
    #[derive(Debug, Clone, Copy, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(oid = 2950, array_oid = 2951))]
    #[diesel(sqlite_type(name = "Text"))]
    pub struct SqlUuid;

    /// `timestamptz` on PostgreSQL, UTC `TEXT` with microseconds on SQLite.
    #[derive(Debug, Clone, Copy, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(oid = 1184, array_oid = 1185))]
    #[diesel(sqlite_type(name = "Text"))]
    pub struct SqlTime;

    /// `jsonb` on PostgreSQL, JSON `TEXT` on SQLite.
    #[derive(Debug, Clone, Copy, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(oid = 3802, array_oid = 3807))]
    #[diesel(sqlite_type(name = "Text"))]
    pub struct SqlJson;
}

use sql_types::{SqlJson, SqlTime, SqlUuid};

diesel::table! {
    use diesel::sql_types::{BigInt, Bool};

    /// PostgreSQL only: the one-row counter events are numbered from, inside each commit.
    event_ids (one) {
        one -> Bool,
        last -> BigInt,
    }
}

diesel::table! {
    use diesel::sql_types::{Integer, Text};
    use super::sql_types::{SqlJson, SqlTime};

    /// Every stored flow type version; a (name, version) is written once and never changed.
    flow_types (name, version) {
        name -> Text,
        version -> Integer,
        definition -> SqlJson,
        created_at -> SqlTime,
    }
}

diesel::table! {
    use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
    use super::sql_types::{SqlJson, SqlTime, SqlUuid};

    /// One row per flow: its current state.
    flows (id) {
        id -> SqlUuid,
        flow_type -> Text,
        flow_type_version -> Integer,
        status -> Text,
        current_phase -> Nullable<Text>,
        next_phase -> Nullable<Text>,
        progress_percentage -> Double,
        input -> SqlJson,
        parent_flow_id -> Nullable<SqlUuid>,
        master_flow_id -> SqlUuid,
        client_account_id -> Text,
        engagement_id -> Text,
        created_by -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        last_seq -> BigInt,
        created_at -> SqlTime,
        updated_at -> SqlTime,
        owner_node -> Nullable<Text>,
        owner_epoch -> BigInt,
    }
}

diesel::table! {
    use diesel::sql_types::{Integer, Nullable, Text};
    use super::sql_types::{SqlJson, SqlTime, SqlUuid};

    /// One row per phase of a flow, keyed by its position in the flow type.
    phase_runs (flow_id, position) {
        flow_id -> SqlUuid,
        position -> Integer,
        name -> Text,
        status -> Text,
        attempt -> Integer,
        started_at -> Nullable<SqlTime>,
        finished_at -> Nullable<SqlTime>,
        output -> Nullable<SqlJson>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::{BigInt, Double, Nullable, Text};
    use super::sql_types::{SqlTime, SqlUuid};

    /// The event history; `id` is assigned by the persistence actor, `seq` is gap-free per flow.
    events (id) {
        id -> BigInt,
        flow_id -> SqlUuid,
        seq -> BigInt,
        master_flow_id -> SqlUuid,
        client_account_id -> Text,
        engagement_id -> Text,
        flow_type -> Text,
        kind -> Text,
        status -> Text,
        current_phase -> Nullable<Text>,
        next_phase -> Nullable<Text>,
        progress_percentage -> Double,
        error -> Nullable<Text>,
        at -> SqlTime,
        status_reason -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::{BigInt, Integer, Nullable, Text};
    use super::sql_types::{SqlJson, SqlTime, SqlUuid};

    /// The failure journal: every failed attempt; `id` is assigned by the database.
    failures (id) {
        id -> BigInt,
        flow_id -> SqlUuid,
        master_flow_id -> SqlUuid,
        phase -> Nullable<Text>,
        attempt -> Integer,
        error_kind -> Text,
        message -> Text,
        diagnostic -> SqlJson,
        at -> SqlTime,
    }
}

diesel::table! {
    use diesel::sql_types::{Integer, Nullable, Text};
    use super::sql_types::{SqlJson, SqlTime, SqlUuid};

    /// External tasks: one row per attempt of an `external` phase; `(flow_id, phase, attempt)`
    /// is unique.
    tasks (id) {
        id -> SqlUuid,
        queue -> Text,
        flow_id -> SqlUuid,
        master_flow_id -> SqlUuid,
        phase -> Text,
        attempt -> Integer,
        client_account_id -> Text,
        engagement_id -> Text,
        payload -> SqlJson,
        status -> Text,
        lease_id -> Nullable<SqlUuid>,
        worker_id -> Nullable<Text>,
        lease_expires_at -> Nullable<SqlTime>,
        result -> Nullable<SqlJson>,
        created_at -> SqlTime,
        updated_at -> SqlTime,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    flow_types, flows, phase_runs, events, failures, tasks
);

/// A uuid column value; the one conversion written by hand is the SQLite text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = SqlUuid)]
pub struct DbUuid(pub Uuid);

impl ToSql<SqlUuid, Pg> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <Uuid as ToSql<diesel::sql_types::Uuid, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<SqlUuid, Pg> for DbUuid {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <Uuid as FromSql<diesel::sql_types::Uuid, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<SqlUuid, Sqlite> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        // Hyphenated lower case: text order equals uuid byte order, so keyset paging on the
        // time-ordered ids works the same as on PostgreSQL.
        out.set_value(self.0.hyphenated().to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<SqlUuid, Sqlite> for DbUuid {
    fn from_sql(bytes: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<diesel::sql_types::Text, Sqlite>>::from_sql(bytes)?;
        Ok(Self(Uuid::parse_str(&text)?))
    }
}

/// A timestamp column value, always UTC with microsecond precision on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = SqlTime)]
pub struct DbTime(pub DateTime<Utc>);

impl ToSql<SqlTime, Pg> for DbTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        // diesel truncates to whole microseconds, as PostgreSQL keeps them.
        <DateTime<Utc> as ToSql<diesel::sql_types::Timestamptz, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<SqlTime, Pg> for DbTime {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<diesel::sql_types::Timestamptz, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<SqlTime, Sqlite> for DbTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        // Fixed width, so text order is time order; microseconds, so both backends agree.
        // Read back by diesel's own `TimestamptzSqlite` parser.
        // Hand-formatted: this runs for several columns of every row on the commit path, and
        // `format` re-parses its pattern each time.
        let t = self.0;
        let micros = t.timestamp_subsec_micros().min(999_999); // a leap second keeps its :59
        out.set_value(format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{micros:06}+00:00",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
        ));
        Ok(IsNull::No)
    }
}

impl FromSql<SqlTime, Sqlite> for DbTime {
    fn from_sql(bytes: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<diesel::sql_types::TimestamptzSqlite, Sqlite>>::from_sql(bytes)
            .map(Self)
    }
}

/// A JSON column value read from the database, or written where no domain value holds the JSON
/// (a task's outcome is serialized at the store boundary).
#[derive(Debug, Clone, PartialEq, FromSqlRow)]
pub struct DbJson(pub Value);

impl ToSql<SqlJson, Pg> for DbJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <Value as ToSql<diesel::sql_types::Jsonb, Pg>>::to_sql(&self.0, out)
    }
}

impl ToSql<SqlJson, Sqlite> for DbJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        <Value as ToSql<diesel::sql_types::Json, Sqlite>>::to_sql(&self.0, out)
    }
}

impl FromSql<SqlJson, Pg> for DbJson {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <Value as FromSql<diesel::sql_types::Jsonb, Pg>>::from_sql(bytes).map(Self)
    }
}

impl FromSql<SqlJson, Sqlite> for DbJson {
    fn from_sql(bytes: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        <Value as FromSql<diesel::sql_types::Json, Sqlite>>::from_sql(bytes).map(Self)
    }
}

/// A JSON value bound as a parameter without copying it out of the domain value.
#[derive(Debug, Clone, Copy, AsExpression)]
#[diesel(sql_type = SqlJson)]
pub struct DbJsonRef<'a>(pub &'a Value);

impl ToSql<SqlJson, Pg> for DbJsonRef<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <Value as ToSql<diesel::sql_types::Jsonb, Pg>>::to_sql(self.0, out)
    }
}

impl ToSql<SqlJson, Sqlite> for DbJsonRef<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        <Value as ToSql<diesel::sql_types::Json, Sqlite>>::to_sql(self.0, out)
    }
}
