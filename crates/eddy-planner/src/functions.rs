//! ksqlDB function names on top of DataFusion's built-ins.
//!
//! ksqlDB users expect `UCASE`, `LCASE`, `LEN` and friends. Where DataFusion has the same function
//! under another name, Eddy registers the ksqlDB name as an alias of DataFusion's implementation, so
//! both run the same vectorized kernel. ksqlDB functions DataFusion lacks are Eddy's own
//! (`split`). `EXPLODE` is DataFusion's `UNNEST` under ksqlDB's name (the planner renames it).

use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionContext;
use datafusion::functions::{string, unicode};
use datafusion::logical_expr::ScalarUDF;

/// ksqlDB name → DataFusion function it is an alias of.
pub(crate) const KSQL_ALIASES: &[(&str, &[&str])] = &[
    ("upper", &["ucase"]),
    ("lower", &["lcase"]),
    ("character_length", &["len"]),
];

/// Registers the ksqlDB aliases in `ctx`.
pub(crate) fn register_ksql_functions(ctx: &SessionContext) {
    for (name, aliases) in KSQL_ALIASES {
        let base = match *name {
            "upper" => string::upper(),
            "lower" => string::lower(),
            "character_length" => unicode::character_length(),
            _ => continue,
        };
        let udf: ScalarUDF = base.as_ref().clone().with_aliases(aliases.iter().copied());
        ctx.register_udf(udf);
    }
    ctx.register_udf(crate::split::split());
    ctx.register_udf(crate::split::regexp_split_to_array());
    debug_assert!(ctx.udf("ucase").is_ok());
}
