//! Rewrites on the parsed query: identifiers sqlparser returned unquoted (keywords used as names)
//! get ksqlDB's upper-casing, and `struct->field` becomes `get_field(struct, 'FIELD')`.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, Ident, ObjectName, ObjectNamePart, Select, SelectItem, TableFactor,
    VisitMut, VisitorMut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};

/// Normalizes every identifier of `node` and rewrites `->`. Fails only when a `->` is not followed
/// by a field name.
pub(crate) fn normalize<T: VisitMut>(node: &mut T) -> Result<(), String> {
    let mut visitor = Normalizer;
    match node.visit(&mut visitor) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(message) => Err(message),
    }
}

fn normalize_ident(ident: &mut Ident) {
    ident.value = crate::lexer::ksql_identifier(&ident.value, ident.quote_style.is_some());
    ident.quote_style = Some('"');
}

struct Normalizer;

impl VisitorMut for Normalizer {
    type Break = String;

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<String> {
        for item in &mut select.projection {
            if let SelectItem::ExprWithAlias { alias, .. } = item {
                normalize_ident(alias);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
        let alias = match factor {
            TableFactor::Table { alias, .. } | TableFactor::Derived { alias, .. } => alias,
            _ => return ControlFlow::Continue(()),
        };
        if let Some(alias) = alias {
            normalize_ident(&mut alias.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<String> {
        for part in &mut relation.0 {
            if let ObjectNamePart::Identifier(ident) = part {
                normalize_ident(ident);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<String> {
        match expr {
            Expr::Identifier(ident) => normalize_ident(ident),
            Expr::CompoundIdentifier(idents) => idents.iter_mut().for_each(normalize_ident),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Arrow,
                right,
            } => {
                let field = match right.as_ref() {
                    Expr::Identifier(ident) => ident.value.clone(),
                    other => {
                        return ControlFlow::Break(format!(
                            "expected a field name after ->, found {other}"
                        ));
                    }
                };
                let text = format!("get_field({left}, '{}')", field.replace('\'', "''"));
                match parse_expr(&text) {
                    Ok(rewritten) => *expr = rewritten,
                    Err(error) => {
                        return ControlFlow::Break(format!("cannot rewrite {text}: {error}"));
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn parse_expr(text: &str) -> Result<Expr, ParserError> {
    Parser::new(&GenericDialect {})
        .try_with_sql(text)?
        .parse_expr()
}
