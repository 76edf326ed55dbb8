use eddy_common::types::SqlType;
use eddy_common::window::{DEFAULT_GRACE_PERIOD_MS, WindowKind};

use super::*;

fn one(sql: &str) -> Statement {
    let mut parsed = parse_statements(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(parsed.len(), 1, "{sql}");
    parsed.remove(0).statement
}

fn error(sql: &str) -> ParseError {
    match parse_statements(sql) {
        Ok(parsed) => panic!("{sql} parsed as {parsed:?}"),
        Err(error) => error,
    }
}

fn select(sql: &str) -> Select {
    match one(sql) {
        Statement::Select(select) => *select,
        other => panic!("not a select: {other:?}"),
    }
}

#[test]
fn create_stream_with_every_type_and_key() {
    let statement = one("CREATE STREAM IF NOT EXISTS orders (
            id STRING KEY, qty INT, total BIGINT, price DOUBLE, amount DECIMAL(10, 2), ok BOOLEAN,
            note VARCHAR, raw BYTES, day DATE, at TIME, ts TIMESTAMP,
            tags ARRAY<STRING>, attrs MAP<STRING, INT>, `Address` STRUCT<street STRING, `Zip` INT>,
            nested ARRAY<ARRAY<INT>>
         ) WITH (kafka_topic='orders', VALUE_FORMAT='json', PARTITIONS=3, timestamp='ts');");
    let Statement::CreateSource {
        kind,
        name,
        read_only,
        or_replace,
        if_not_exists,
        columns,
        properties,
    } = statement
    else {
        panic!("{statement:?}")
    };
    assert_eq!(
        (kind, name.as_str(), read_only, or_replace, if_not_exists),
        (SourceKind::Stream, "ORDERS", false, false, true)
    );
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ID", "QTY", "TOTAL", "PRICE", "AMOUNT", "OK", "NOTE", "RAW", "DAY", "AT", "TS",
            "TAGS", "ATTRS", "Address", "NESTED"
        ]
    );
    assert_eq!(columns[0].key, ColumnKeyRole::Key);
    assert!(columns[1..].iter().all(|c| c.key == ColumnKeyRole::Value));
    let types: Vec<SqlType> = columns.iter().map(|c| c.sql_type.clone()).collect();
    assert_eq!(
        types,
        vec![
            SqlType::String,
            SqlType::Int,
            SqlType::BigInt,
            SqlType::Double,
            SqlType::Decimal {
                precision: 10,
                scale: 2
            },
            SqlType::Boolean,
            SqlType::String,
            SqlType::Bytes,
            SqlType::Date,
            SqlType::Time,
            SqlType::Timestamp,
            SqlType::Array(Box::new(SqlType::String)),
            SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::Int)),
            SqlType::Struct(vec![
                ("STREET".into(), SqlType::String),
                ("Zip".into(), SqlType::Int)
            ]),
            SqlType::Array(Box::new(SqlType::Array(Box::new(SqlType::Int)))),
        ]
    );
    let properties: Vec<(&str, &str)> = properties
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(
        properties,
        [
            ("KAFKA_TOPIC", "orders"),
            ("VALUE_FORMAT", "json"),
            ("PARTITIONS", "3"),
            ("TIMESTAMP", "ts")
        ]
    );
}

#[test]
fn create_table_requires_primary_key_spelling() {
    let Statement::CreateSource { kind, columns, .. } = one(
        "create or replace table users (id bigint primary key, name string) with (kafka_topic='u')",
    ) else {
        panic!()
    };
    assert_eq!(kind, SourceKind::Table);
    assert_eq!(columns[0].key, ColumnKeyRole::PrimaryKey);
    let e = error("CREATE TABLE users (id BIGINT KEY) WITH (KAFKA_TOPIC='u');");
    assert_eq!((e.line, e.column), (1, 31));
    assert!(e.message.contains("PRIMARY KEY"), "{e}");
    let e = error("CREATE STREAM s (id BIGINT PRIMARY KEY) WITH (KAFKA_TOPIC='u');");
    assert!(e.message.contains("KEY columns"), "{e}");
}

#[test]
fn create_source_makes_a_read_only_stream_or_table_and_refuses_as_select() {
    for (sql, want_kind) in [
        (
            "CREATE SOURCE TABLE users (id BIGINT PRIMARY KEY, name STRING) WITH (KAFKA_TOPIC='u');",
            SourceKind::Table,
        ),
        (
            "create or replace source stream clicks (page string) with (kafka_topic='c');",
            SourceKind::Stream,
        ),
    ] {
        let Statement::CreateSource {
            kind, read_only, ..
        } = one(sql)
        else {
            panic!("{sql}")
        };
        assert_eq!((kind, read_only), (want_kind, true), "{sql}");
    }
    let Statement::CreateSource { read_only, .. } =
        one("CREATE TABLE users (id BIGINT PRIMARY KEY) WITH (KAFKA_TOPIC='u');")
    else {
        panic!()
    };
    assert!(!read_only);
    // The error points at SOURCE, the word that makes AS SELECT impossible.
    let e = error("CREATE SOURCE TABLE t AS SELECT * FROM users;");
    assert_eq!((e.line, e.column), (1, 8), "{e}");
    assert!(e.message.contains("read-only"), "{e}");
    let e = error("CREATE SOURCE VIEW v (id INT) WITH (KAFKA_TOPIC='v');");
    assert!(e.message.contains("expected STREAM or TABLE"), "{e}");
}

#[test]
fn bad_type_names_position_and_alternatives() {
    let e = error("CREATE STREAM s (\n  id INT,\n  name STRNG\n) WITH (KAFKA_TOPIC='s');");
    assert_eq!((e.line, e.column), (3, 8));
    assert!(e.message.contains("unknown data type \"STRNG\""), "{e}");
    assert!(
        e.to_string()
            .starts_with("syntax error at line 3, column 8: "),
        "{e}"
    );
    let e = error("CREATE STREAM s (d DECIMAL(3, 5)) WITH (KAFKA_TOPIC='s');");
    assert!(
        e.message
            .contains("scale 5 is greater than its precision 3"),
        "{e}"
    );
    let e = error("CREATE STREAM s (a ARRAY<INT) WITH (KAFKA_TOPIC='s');");
    assert!(e.message.contains("expected \">\""), "{e}");
}

#[test]
fn csas_with_where_functions_and_partition_by() {
    let Statement::CreateSourceAs {
        kind,
        name,
        properties,
        select,
        ..
    } = one(
        "CREATE STREAM big_orders WITH (KAFKA_TOPIC='big', VALUE_FORMAT='JSON') AS
           SELECT id, ucase(item) AS Item, qty * 2 AS double_qty, address->city
           FROM orders o WHERE qty > 10 AND item LIKE 'a%'
           PARTITION BY item EMIT CHANGES;",
    )
    else {
        panic!()
    };
    assert_eq!((kind, name.as_str()), (SourceKind::Stream, "BIG_ORDERS"));
    assert_eq!(properties.len(), 2);
    assert_eq!(select.emit, Some(Emit::Changes));
    assert_eq!(
        select.query.to_string(),
        r#"SELECT "ID", ucase("ITEM") AS "ITEM", "QTY" * 2 AS "DOUBLE_QTY", get_field("ADDRESS", 'CITY') FROM "ORDERS" "O" WHERE "QTY" > 10 AND "ITEM" LIKE 'a%'"#
    );
    assert_eq!(select.partition_by.len(), 1);
    assert_eq!(select.partition_by[0].to_string(), r#""ITEM""#);
}

#[test]
fn push_query_with_limit_keeps_limit_in_query() {
    let s = select("SELECT * FROM pageviews EMIT CHANGES LIMIT 3;");
    assert_eq!(s.emit, Some(Emit::Changes));
    assert_eq!(s.query.to_string(), r#"SELECT * FROM "PAGEVIEWS" LIMIT 3"#);
}

#[test]
fn nested_struct_access_array_and_map_indexing() {
    let s = select("SELECT a->b->c, arr[1], m['k'], `MixedCase` FROM s EMIT CHANGES");
    assert_eq!(
        s.query.to_string(),
        r#"SELECT get_field(get_field("A", 'B'), 'C'), "ARR"[1], "M"['k'], "MixedCase" FROM "S""#
    );
}

#[test]
fn keyword_named_columns_are_upper_cased() {
    let s = select("SELECT value, key, count(*) FROM s GROUP BY value EMIT CHANGES");
    assert_eq!(
        s.query.to_string(),
        r#"SELECT "VALUE", "KEY", count(*) FROM "S" GROUP BY "VALUE""#
    );
}

#[test]
fn case_cast_and_functions() {
    let s = select(
        "SELECT CASE WHEN qty > 1 THEN 'many' ELSE 'one' END AS size, CAST(qty AS BIGINT), IFNULL(x, 0), \
         COALESCE(x, y), SUBSTRING(name, 1, 2), CONCAT(a, b), LEN(name) FROM s EMIT CHANGES",
    );
    assert_eq!(
        s.query.to_string(),
        r#"SELECT CASE WHEN "QTY" > 1 THEN 'many' ELSE 'one' END AS "SIZE", CAST("QTY" AS BIGINT), ifnull("X", 0), coalesce("X", "Y"), SUBSTRING("NAME", 1, 2), concat("A", "B"), len("NAME") FROM "S""#
    );
}

#[test]
fn window_clause_is_taken_out() {
    let s =
        select("SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k EMIT FINAL");
    assert_eq!(s.emit, Some(Emit::Final));
    let window = s.window.expect("a window");
    assert_eq!(window.kind, WindowKind::Tumbling { size_ms: 60_000 });
    assert_eq!(window.grace_ms, DEFAULT_GRACE_PERIOD_MS);
    assert_eq!(
        s.query.to_string(),
        r#"SELECT "K", count(*) FROM "S" GROUP BY "K""#
    );
}

#[test]
fn window_clauses_of_every_kind() {
    let window = |sql: &str| {
        select(&format!(
            "SELECT k, COUNT(*) FROM s WINDOW {sql} GROUP BY k EMIT CHANGES"
        ))
        .window
        .expect("a window")
    };
    let w = window(
        "HOPPING (SIZE 2 MINUTES, ADVANCE BY 30 SECONDS, GRACE PERIOD 0 SECONDS, RETENTION 1 DAY)",
    );
    assert_eq!(
        w.kind,
        WindowKind::Hopping {
            size_ms: 120_000,
            advance_ms: 30_000
        }
    );
    assert_eq!((w.grace_ms, w.retention_ms), (0, 86_400_000));
    let w = window("session (5 minutes, grace period 10 millisecond)");
    assert_eq!(w.kind, WindowKind::Session { gap_ms: 300_000 });
    assert_eq!((w.grace_ms, w.retention_ms), (10, 300_010));
    let w = window("TUMBLING (GRACE PERIOD 1 HOUR, SIZE 1 DAY)");
    assert_eq!(
        w.kind,
        WindowKind::Tumbling {
            size_ms: 86_400_000
        }
    );
    // The canonical text parses back to the same window.
    assert_eq!(window(&w.to_string()), w);
}

#[test]
fn bad_window_clauses_say_what_is_wrong_and_where() {
    let e = error("SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 FORTNIGHT) GROUP BY k;");
    assert_eq!((e.line, e.column), (1, 51), "{e}");
    assert!(e.message.contains("a time unit"), "{e}");
    let e = error("SELECT k, COUNT(*) FROM s WINDOW HOPPING (SIZE 1 MINUTE) GROUP BY k;");
    assert!(e.message.contains("needs an ADVANCE BY"), "{e}");
    let e = error(
        "SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 MINUTE, SIZE 2 MINUTES) GROUP BY k;",
    );
    assert!(e.message.contains("SIZE is given twice"), "{e}");
    let e = error("SELECT k, COUNT(*) FROM s WINDOW SESSION (SIZE 1 MINUTE) GROUP BY k;");
    assert!(e.message.contains("has a gap"), "{e}");
    let e = error(
        "SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 MINUTE RETENTION 1 DAY) GROUP BY k;",
    );
    assert!(e.message.contains("expected \",\""), "{e}");
    let e = error("SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 0 SECONDS) GROUP BY k;");
    assert!(e.message.contains("SIZE must be positive"), "{e}");
    let e = error(
        "SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 HOUR, RETENTION 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY k;",
    );
    assert!(e.message.contains("RETENTION"), "{e}");
    let e = error(
        "SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 HOUR) WINDOW TUMBLING (SIZE 1 HOUR) GROUP BY k;",
    );
    assert!(e.message.contains("WINDOW is given twice"), "{e}");
}

#[test]
fn within_clause_of_a_stream_stream_join_is_taken_out() {
    let s = select(
        "SELECT * FROM a JOIN b WITHIN 1 HOUR GRACE PERIOD 10 MINUTES ON a.id = b.id EMIT CHANGES",
    );
    let within = s.within_of(0).expect("a join window");
    assert_eq!(
        (within.before_ms, within.after_ms, within.grace_ms),
        (3_600_000, 3_600_000, 600_000)
    );
    assert_eq!(
        s.query.to_string(),
        r#"SELECT * FROM "A" JOIN "B" ON "A"."ID" = "B"."ID""#
    );
    let s =
        select("SELECT * FROM a AS x LEFT JOIN b y WITHIN (1 SECOND, 2 SECONDS) ON x.id = y.id");
    let within = s.within_of(0).expect("a join window");
    assert_eq!(
        (within.before_ms, within.after_ms, within.grace_ms),
        (1000, 2000, DEFAULT_GRACE_PERIOD_MS)
    );
    // The canonical text parses back to the same window.
    let again = select(&format!("SELECT * FROM a JOIN b {within} ON a.id = b.id"));
    assert_eq!(again.within, [Some(within)]);
    // WITHIN GROUP belongs to an aggregate call, not to a join.
    let s = select("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM s");
    assert!(s.within.is_empty());
    assert!(s.query.to_string().contains("WITHIN GROUP"), "{}", s.query);
}

#[test]
fn each_within_clause_belongs_to_the_join_it_follows() {
    let s = select(
        "SELECT * FROM a JOIN t ON a.k = t.k JOIN b WITHIN 1 SECOND ON a.id = b.id \
         LEFT JOIN c WITHIN 2 SECONDS ON a.id = c.id JOIN u ON a.k = u.k",
    );
    assert_eq!(s.within.len(), 3, "{:?}", s.within);
    assert_eq!(s.within_of(0), None);
    assert_eq!(s.within_of(1).map(|w| w.before_ms), Some(1000));
    assert_eq!(s.within_of(2).map(|w| w.before_ms), Some(2000));
    assert_eq!(s.within_of(3), None);
    // A JOIN inside a subquery does not count.
    let s = select(
        "SELECT * FROM (SELECT * FROM x JOIN y ON x.k = y.k) q JOIN b WITHIN 1 SECOND ON q.id = b.id",
    );
    assert_eq!(s.within_of(0).map(|w| w.before_ms), Some(1000));
}

#[test]
fn bad_within_clauses_say_what_is_wrong_and_where() {
    let e = error("SELECT * FROM a JOIN b WITHIN 1 FORTNIGHT ON a.id = b.id;");
    assert_eq!((e.line, e.column), (1, 33), "{e}");
    assert!(e.message.contains("a time unit"), "{e}");
    let e = error("SELECT * FROM a JOIN b WITHIN (1 SECOND) ON a.id = b.id;");
    assert!(e.message.contains("expected \",\""), "{e}");
    let e = error("SELECT * FROM a JOIN b WITHIN 1 SECOND WITHIN 2 SECONDS ON a.id = b.id;");
    assert!(
        e.message.contains("WITHIN is given twice for one join"),
        "{e}"
    );
    let e = error("SELECT * FROM a JOIN b WITHIN 1 SECOND GRACE PERIOD 400 YEARS ON a.id = b.id;");
    assert!(e.message.contains("a time unit"), "{e}");
}

#[test]
fn insert_forms() {
    let Statement::InsertValues {
        target,
        columns,
        values,
    } = one("INSERT INTO orders (id, qty, ROWTIME) VALUES ('a', 1 + 2, 1000);")
    else {
        panic!()
    };
    assert_eq!(target, "ORDERS");
    assert_eq!(columns, ["ID", "QTY", "ROWTIME"]);
    assert_eq!(
        values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        ["'a'", "1 + 2", "1000"]
    );
    let Statement::InsertValues {
        columns, values, ..
    } = one("INSERT INTO orders VALUES ('a', 1)")
    else {
        panic!()
    };
    assert!(columns.is_empty());
    assert_eq!(values.len(), 2);
    let Statement::InsertSelect {
        target,
        properties,
        select,
    } = one("INSERT INTO all_orders WITH (QUERY_ID='my_q') SELECT * FROM eu_orders EMIT CHANGES")
    else {
        panic!()
    };
    assert_eq!(target, "ALL_ORDERS");
    assert_eq!(properties[0].value, "my_q");
    assert_eq!(select.query.to_string(), r#"SELECT * FROM "EU_ORDERS""#);
}

#[test]
fn small_statements() {
    assert_eq!(
        one("show streams"),
        Statement::Show {
            target: ShowTarget::Streams,
            extended: false
        }
    );
    assert_eq!(
        one("LIST TABLES EXTENDED"),
        Statement::Show {
            target: ShowTarget::Tables,
            extended: true
        }
    );
    assert_eq!(
        one("SHOW TOPICS;"),
        Statement::Show {
            target: ShowTarget::Topics,
            extended: false
        }
    );
    assert_eq!(
        one("SHOW QUERIES;"),
        Statement::Show {
            target: ShowTarget::Queries,
            extended: false
        }
    );
    assert_eq!(
        one("SHOW PROPERTIES;"),
        Statement::Show {
            target: ShowTarget::Properties,
            extended: false
        }
    );
    assert_eq!(
        one("DESCRIBE orders"),
        Statement::Describe {
            name: "ORDERS".into(),
            extended: false
        }
    );
    assert_eq!(
        one("DESCRIBE EXTENDED `orders`"),
        Statement::Describe {
            name: "orders".into(),
            extended: true
        }
    );
    assert_eq!(
        one("DROP STREAM IF EXISTS orders DELETE TOPIC"),
        Statement::Drop {
            kind: SourceKind::Stream,
            name: "ORDERS".into(),
            if_exists: true,
            delete_topic: true
        }
    );
    assert_eq!(
        one("DROP TABLE t"),
        Statement::Drop {
            kind: SourceKind::Table,
            name: "T".into(),
            if_exists: false,
            delete_topic: false
        }
    );
    assert_eq!(
        one("TERMINATE csas_big_orders_1"),
        Statement::Terminate {
            query_id: Some("CSAS_BIG_ORDERS_1".into())
        }
    );
    assert_eq!(
        one("TERMINATE ALL"),
        Statement::Terminate { query_id: None }
    );
    assert_eq!(
        one("EXPLAIN CSAS_X_0"),
        Statement::ExplainQuery {
            query_id: "CSAS_X_0".into()
        }
    );
    assert!(matches!(
        one("EXPLAIN SELECT * FROM s EMIT CHANGES"),
        Statement::ExplainSelect(_)
    ));
    assert_eq!(
        one("PRINT 'orders' FROM BEGINNING INTERVAL 2 LIMIT 10"),
        Statement::Print {
            topic: "orders".into(),
            from_beginning: true,
            interval: Some(2),
            limit: Some(10)
        }
    );
    assert_eq!(
        one("PRINT Orders"),
        Statement::Print {
            topic: "Orders".into(),
            from_beginning: false,
            interval: None,
            limit: None
        }
    );
    assert_eq!(
        one("SET 'auto.offset.reset' = 'earliest'"),
        Statement::Set {
            name: "auto.offset.reset".into(),
            value: "earliest".into()
        }
    );
    assert_eq!(
        one("UNSET 'auto.offset.reset'"),
        Statement::Unset {
            name: "auto.offset.reset".into()
        }
    );
    assert_eq!(
        one("PRODUCE TO 'orders' PARTITION 0 KEY 'a' VALUE '{\"qty\": 1}' TIMESTAMP 1000"),
        Statement::Produce {
            topic: "orders".into(),
            partition: Some(0),
            key: Some("a".into()),
            value: Some("{\"qty\": 1}".into()),
            timestamp_ms: Some(1000)
        }
    );
    assert_eq!(
        one("PRODUCE TO orders VALUE NULL"),
        Statement::Produce {
            topic: "orders".into(),
            partition: None,
            key: None,
            value: None,
            timestamp_ms: None
        }
    );
    assert_eq!(
        one("run script 'examples/orders/orders.sql'"),
        Statement::RunScript {
            path: "examples/orders/orders.sql".into()
        }
    );
    let error = parse_statements("RUN SCRIPT orders.sql").unwrap_err();
    assert_eq!((error.line, error.column), (1, 12), "{error}");
}

#[test]
fn scripts_split_on_semicolons_outside_strings_and_comments() {
    let parsed = parse_statements(
        "-- a comment; with a semicolon\nSET 'a'='x;y';\n\n/* block; */ SHOW STREAMS ;\nSELECT 'a;b' FROM s EMIT CHANGES",
    )
    .unwrap();
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[0].sql, "SET 'a'='x;y'");
    assert_eq!(parsed[0].line, 2);
    assert_eq!(parsed[1].sql, "SHOW STREAMS");
    assert_eq!(parsed[1].line, 4);
    assert_eq!(parsed[2].sql, "SELECT 'a;b' FROM s EMIT CHANGES");
    assert!(parse_statements("  ;; -- nothing\n").unwrap().is_empty());
}

#[test]
fn statement_text_is_exact_for_multibyte_input() {
    let parsed = parse_statements("SET 'ü'='é';  SHOW TOPICS;").unwrap();
    assert_eq!(parsed[0].sql, "SET 'ü'='é'");
    assert_eq!(parsed[1].sql, "SHOW TOPICS");
}

#[test]
fn errors_name_line_column_and_expectation() {
    let e = error("SELECT id FROM orders\nWHERE EMIT CHANGES;");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("expected an expression"), "{e}");
    let e = error("CREATE STREM s (id INT);");
    assert_eq!((e.line, e.column), (1, 8));
    assert_eq!(e.message, "expected STREAM or TABLE, found \"STREM\"");
    let e = error("SELEKT * FROM s;");
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.message.starts_with("expected a statement"), "{e}");
    let e = error("SHOW STREAMS EXTRA;");
    assert_eq!((e.line, e.column), (1, 14));
    assert_eq!(e.message, "expected end of statement, found \"EXTRA\"");
    let e = error("SELECT 'unterminated FROM s;");
    assert_eq!(e.line, 1);
    assert!(e.message.contains("nterminated"), "{e}");
    let e = error("CREATE STREAM s (id INT) WITH (KAFKA_TOPIC='a', kafka_topic='b');");
    assert!(e.message.contains("KAFKA_TOPIC is given twice"), "{e}");
    let e = error("SELECT * FROM s EMIT SOMETIMES;");
    assert!(e.message.contains("CHANGES or FINAL"), "{e}");
    let e = error("SELECT * FROM s PARTITION BY EMIT CHANGES;");
    assert!(e.message.contains("expression after PARTITION BY"), "{e}");
}

#[test]
fn complete_input_detection() {
    assert!(is_complete("SELECT 1;"));
    assert!(is_complete("SELECT 1; -- trailing comment\n"));
    assert!(!is_complete("SELECT 1"));
    assert!(!is_complete("SELECT ';"));
    assert!(!is_complete("SELECT 1 /* ; */"));
    assert!(!is_complete(""));
}

#[test]
fn expressions_follow_the_same_rules() {
    assert_eq!(
        parse_expression("ucase(name) || 'x'").unwrap().to_string(),
        r#"ucase("NAME") || 'x'"#
    );
}
