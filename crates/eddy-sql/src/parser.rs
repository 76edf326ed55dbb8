//! The statement parser: KSQL statements by hand over the token stream, queries and expressions
//! by sqlparser.

use eddy_common::types::SqlType;
use eddy_common::window::{JoinWindow, WindowKind, WindowSpec};
use sqlparser::ast;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Word};

use crate::ast::{
    ColumnDef, ColumnKeyRole, Emit, ParsedStatement, Property, Select, ShowTarget, SourceKind,
    Statement,
};
use crate::error::ParseError;
use crate::lexer::{identifier, normalize_tokens, split_statements};
use crate::normalize::normalize;

/// Deepest nesting of `ARRAY<...>`, `MAP<...>` and `STRUCT<...>` accepted in a column type.
pub const MAX_TYPE_DEPTH: usize = 32;

/// Parses a script of `;`-separated statements.
pub fn parse_statements(sql: &str) -> Result<Vec<ParsedStatement>, ParseError> {
    split_statements(sql)?
        .into_iter()
        .map(|statement| {
            let mut cursor = Cursor::new(statement.tokens, statement.end);
            let parsed = cursor.statement()?;
            Ok(ParsedStatement {
                statement: parsed,
                sql: statement.sql,
                line: statement.start.line,
            })
        })
        .collect()
}

/// Parses one expression with the dialect's identifier rules (for tools and tests).
pub fn parse_expression(sql: &str) -> Result<ast::Expr, ParseError> {
    let tokens = crate::lexer::tokenize(sql)?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect::<Vec<_>>();
    let end = tokens
        .last()
        .map(|t| t.span.end)
        .unwrap_or(Location { line: 1, column: 1 });
    let mut cursor = Cursor::new(tokens, end);
    let mut expr = cursor.sqlparser(cursor.tokens.len(), |p| p.parse_expr())?;
    cursor.expect_end()?;
    normalize(&mut expr).map_err(|m| ParseError::at(end, m))?;
    Ok(expr)
}

/// A position in the tokens of one statement. `raw` are the tokens as written (for keywords and
/// names), `normalized` the same tokens after the identifier rules (for sqlparser).
struct Cursor {
    tokens: Vec<TokenWithSpan>,
    normalized: Vec<TokenWithSpan>,
    position: usize,
    end: Location,
}

impl Cursor {
    fn new(tokens: Vec<TokenWithSpan>, end: Location) -> Self {
        let normalized = normalize_tokens(&tokens);
        Self {
            tokens,
            normalized,
            position: 0,
            end,
        }
    }

    // ---- token helpers ----

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position).map(|t| &t.token)
    }

    fn peek_nth(&self, n: usize) -> Option<&Token> {
        self.tokens.get(self.position + n).map(|t| &t.token)
    }

    fn location(&self) -> Location {
        self.tokens
            .get(self.position)
            .map(|t| t.span.start)
            .unwrap_or(self.end)
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "end of input".into(),
            Some(Token::Word(w)) if w.quote_style.is_none() => format!("\"{}\"", w.value),
            Some(token) => format!("\"{token}\""),
        }
    }

    fn error(&self, expected: &str) -> ParseError {
        ParseError::at(
            self.location(),
            format!("expected {expected}, found {}", self.found()),
        )
    }

    /// True when the next token is the unquoted word `keyword` (any case).
    fn peek_keyword_at(&self, n: usize, keyword: &str) -> bool {
        matches!(self.peek_nth(n), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword))
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        self.peek_keyword_at(0, keyword)
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.position += 1;
        }
        found
    }

    fn eat_keywords(&mut self, keywords: &[&str]) -> bool {
        let all = keywords
            .iter()
            .enumerate()
            .all(|(i, k)| self.peek_keyword_at(i, k));
        if all {
            self.position += keywords.len();
        }
        all
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), ParseError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error(keyword))
        }
    }

    fn eat_token(&mut self, token: &Token) -> bool {
        let found = self.peek() == Some(token);
        if found {
            self.position += 1;
        }
        found
    }

    fn expect_token(&mut self, token: &Token) -> Result<(), ParseError> {
        if self.eat_token(token) {
            Ok(())
        } else {
            Err(self.error(&format!("\"{token}\"")))
        }
    }

    fn expect_end(&self) -> Result<(), ParseError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("end of statement")),
        }
    }

    /// A name: upper-cased unless quoted.
    fn identifier(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token::Word(word)) => {
                let name = identifier(word);
                self.position += 1;
                Ok(name)
            }
            _ => Err(self.error(what)),
        }
    }

    /// A name kept as written (topic names are case-sensitive), quoted or not.
    fn name_as_written(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token::Word(Word { value, .. })) | Some(Token::SingleQuotedString(value)) => {
                let name = value.clone();
                self.position += 1;
                Ok(name)
            }
            _ => Err(self.error(what)),
        }
    }

    fn string_literal(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Token::SingleQuotedString(value)) => {
                let value = value.clone();
                self.position += 1;
                Ok(value)
            }
            _ => Err(self.error(what)),
        }
    }

    fn integer(&mut self, what: &str) -> Result<i64, ParseError> {
        let negative = self.eat_token(&Token::Minus);
        match self.peek() {
            Some(Token::Number(text, _)) => {
                let location = self.location();
                let value: i64 = text.parse().map_err(|_| {
                    ParseError::at(location, format!("expected {what}, found \"{text}\""))
                })?;
                self.position += 1;
                Ok(if negative { -value } else { value })
            }
            _ => Err(self.error(what)),
        }
    }

    fn unsigned(&mut self, what: &str) -> Result<u64, ParseError> {
        let location = self.location();
        let value = self.integer(what)?;
        u64::try_from(value)
            .map_err(|_| ParseError::at(location, format!("expected {what}, found {value}")))
    }

    /// Runs a sqlparser function over the normalized tokens from here to `end`, then continues after
    /// what it consumed.
    fn sqlparser<T>(
        &mut self,
        end: usize,
        parse: impl FnOnce(&mut Parser) -> Result<T, sqlparser::parser::ParserError>,
    ) -> Result<T, ParseError> {
        self.sqlparser_tokens(self.normalized[self.position..end].to_vec(), end, parse)
    }

    fn sqlparser_tokens<T>(
        &mut self,
        tokens: Vec<TokenWithSpan>,
        end: usize,
        parse: impl FnOnce(&mut Parser) -> Result<T, sqlparser::parser::ParserError>,
    ) -> Result<T, ParseError> {
        let end_location = self
            .tokens
            .get(end)
            .map(|t| t.span.start)
            .unwrap_or(self.end);
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let value = parse(&mut parser).map_err(|e| ParseError::from_sqlparser(e, end_location))?;
        let next = parser.peek_token();
        self.position = if next.token == Token::EOF {
            end
        } else {
            self.tokens[self.position..end]
                .iter()
                .position(|t| t.span == next.span)
                .map(|i| self.position + i)
                .unwrap_or(end)
        };
        Ok(value)
    }

    // ---- statements ----

    fn statement(&mut self) -> Result<Statement, ParseError> {
        let statement = if self.peek_keyword("CREATE") {
            self.create()?
        } else if self.peek_keyword("SELECT")
            || self.peek_keyword("WITH")
            || self.peek() == Some(&Token::LParen)
        {
            Statement::Select(Box::new(self.select(self.tokens.len())?))
        } else if self.eat_keyword("INSERT") {
            self.insert()?
        } else if self.eat_keyword("SHOW") || self.eat_keyword("LIST") {
            self.show()?
        } else if self.eat_keyword("DESCRIBE") || self.eat_keyword("DESC") {
            let extended = self.eat_keyword("EXTENDED");
            if !extended
                && (self.peek_keyword("STREAMS") || self.peek_keyword("TABLES"))
                && self.peek_nth(1).is_none()
            {
                let target = if self.eat_keyword("STREAMS") {
                    ShowTarget::Streams
                } else {
                    self.position += 1;
                    ShowTarget::Tables
                };
                Statement::Show {
                    target,
                    extended: true,
                }
            } else {
                Statement::Describe {
                    name: self.identifier("a stream or table name")?,
                    extended,
                }
            }
        } else if self.eat_keyword("DROP") {
            self.drop()?
        } else if self.eat_keyword("TERMINATE") {
            if self.eat_keyword("ALL") {
                Statement::Terminate { query_id: None }
            } else {
                Statement::Terminate {
                    query_id: Some(self.identifier("a query id")?),
                }
            }
        } else if self.eat_keyword("EXPLAIN") {
            if self.peek_keyword("SELECT") || self.peek_keyword("WITH") {
                Statement::ExplainSelect(Box::new(self.select(self.tokens.len())?))
            } else {
                Statement::ExplainQuery {
                    query_id: self.identifier("a query id or SELECT")?,
                }
            }
        } else if self.eat_keyword("PRINT") {
            self.print()?
        } else if self.eat_keyword("SET") {
            let name = self.string_literal(
                "a quoted property name, as in SET 'auto.offset.reset' = 'earliest'",
            )?;
            self.expect_token(&Token::Eq)?;
            let value = self.string_literal("a quoted property value")?;
            Statement::Set { name, value }
        } else if self.eat_keyword("UNSET") {
            Statement::Unset {
                name: self.string_literal("a quoted property name")?,
            }
        } else if self.eat_keyword("PRODUCE") {
            self.produce()?
        } else if self.eat_keywords(&["RUN", "SCRIPT"]) {
            Statement::RunScript {
                path: self.string_literal("a quoted file name, as in RUN SCRIPT 'setup.sql'")?,
            }
        } else {
            return Err(self.error(
                "a statement (CREATE, SELECT, INSERT, SHOW, DESCRIBE, DROP, TERMINATE, EXPLAIN, PRINT, SET, UNSET, PRODUCE, RUN SCRIPT)",
            ));
        };
        self.expect_end()?;
        Ok(statement)
    }

    fn create(&mut self) -> Result<Statement, ParseError> {
        self.expect_keyword("CREATE")?;
        let or_replace = self.eat_keywords(&["OR", "REPLACE"]);
        let source_at = self.location();
        let read_only = self.eat_keyword("SOURCE");
        let kind = self.source_kind()?;
        let if_not_exists = self.eat_keywords(&["IF", "NOT", "EXISTS"]);
        let name = self.identifier(&format!(
            "a {} name",
            if kind == SourceKind::Stream {
                "stream"
            } else {
                "table"
            }
        ))?;
        let columns = if self.peek() == Some(&Token::LParen) {
            Some(self.column_defs(kind)?)
        } else {
            None
        };
        let properties = if self.eat_keyword("WITH") {
            self.properties()?
        } else {
            Vec::new()
        };
        if self.eat_keyword("AS") {
            if read_only {
                return Err(ParseError::at(
                    source_at,
                    "CREATE SOURCE cannot be used with AS SELECT: a SOURCE stream or table is \
                     read-only, and a query writes the result of AS SELECT; use CREATE STREAM or \
                     CREATE TABLE ... AS SELECT"
                        .to_owned(),
                ));
            }
            if let Some(_columns) = columns {
                return Err(self.error(
                    "no column list in CREATE ... AS SELECT (the query defines the columns)",
                ));
            }
            let select = self.select(self.tokens.len())?;
            return Ok(Statement::CreateSourceAs {
                kind,
                name,
                or_replace,
                if_not_exists,
                properties,
                select: Box::new(select),
            });
        }
        let columns = columns.unwrap_or_default();
        Ok(Statement::CreateSource {
            kind,
            name,
            read_only,
            or_replace,
            if_not_exists,
            columns,
            properties,
        })
    }

    fn source_kind(&mut self) -> Result<SourceKind, ParseError> {
        if self.eat_keyword("STREAM") {
            Ok(SourceKind::Stream)
        } else if self.eat_keyword("TABLE") {
            Ok(SourceKind::Table)
        } else {
            Err(self.error("STREAM or TABLE"))
        }
    }

    fn column_defs(&mut self, kind: SourceKind) -> Result<Vec<ColumnDef>, ParseError> {
        self.expect_token(&Token::LParen)?;
        let mut columns = Vec::new();
        loop {
            let name = self.identifier("a column name")?;
            let sql_type = self.data_type(0)?;
            let location = self.location();
            let key = if self.eat_keywords(&["PRIMARY", "KEY"]) {
                if kind == SourceKind::Stream {
                    return Err(ParseError::at(
                        location,
                        "a stream has KEY columns, not PRIMARY KEY columns",
                    ));
                }
                ColumnKeyRole::PrimaryKey
            } else if self.eat_keyword("KEY") {
                if kind == SourceKind::Table {
                    return Err(ParseError::at(
                        location,
                        "a table has PRIMARY KEY columns, not KEY columns",
                    ));
                }
                ColumnKeyRole::Key
            } else {
                ColumnKeyRole::Value
            };
            columns.push(ColumnDef {
                name,
                sql_type,
                key,
            });
            if !self.eat_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(&Token::RParen)?;
        Ok(columns)
    }

    /// A ksqlDB type. `>>` closing two nested types is split into two `>`.
    fn data_type(&mut self, depth: usize) -> Result<SqlType, ParseError> {
        if depth > MAX_TYPE_DEPTH {
            return Err(ParseError::at(
                self.location(),
                format!("types nest deeper than {MAX_TYPE_DEPTH} levels"),
            ));
        }
        let location = self.location();
        let name = match self.peek() {
            Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_uppercase(),
            _ => return Err(self.error("a data type")),
        };
        self.position += 1;
        let sql_type = match name.as_str() {
            "BOOLEAN" | "BOOL" => SqlType::Boolean,
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" => SqlType::BigInt,
            "DOUBLE" => {
                self.eat_keyword("PRECISION");
                SqlType::Double
            }
            "DECIMAL" | "NUMERIC" => {
                self.expect_token(&Token::LParen)?;
                let precision_location = self.location();
                let precision = self.unsigned("the precision of DECIMAL")?;
                self.expect_token(&Token::Comma)?;
                let scale_location = self.location();
                let scale = self.unsigned("the scale of DECIMAL")?;
                self.expect_token(&Token::RParen)?;
                if !(1..=38).contains(&precision) {
                    return Err(ParseError::at(
                        precision_location,
                        format!("DECIMAL precision must be between 1 and 38, found {precision}"),
                    ));
                }
                if scale > precision {
                    return Err(ParseError::at(
                        scale_location,
                        format!("DECIMAL scale {scale} is greater than its precision {precision}"),
                    ));
                }
                SqlType::Decimal {
                    precision: precision as u8,
                    scale: scale as i8,
                }
            }
            "STRING" | "VARCHAR" => {
                if self.eat_token(&Token::LParen) {
                    self.unsigned("a length")?;
                    self.expect_token(&Token::RParen)?;
                }
                SqlType::String
            }
            "BYTES" => SqlType::Bytes,
            "DATE" => SqlType::Date,
            "TIME" => SqlType::Time,
            "TIMESTAMP" => SqlType::Timestamp,
            "ARRAY" => {
                self.expect_token(&Token::Lt)?;
                let element = self.data_type(depth + 1)?;
                self.close_angle()?;
                SqlType::Array(Box::new(element))
            }
            "MAP" => {
                self.expect_token(&Token::Lt)?;
                let key = self.data_type(depth + 1)?;
                self.expect_token(&Token::Comma)?;
                let value = self.data_type(depth + 1)?;
                self.close_angle()?;
                SqlType::Map(Box::new(key), Box::new(value))
            }
            "STRUCT" => {
                self.expect_token(&Token::Lt)?;
                let mut fields: Vec<(String, SqlType)> = Vec::new();
                if !self.peek_close_angle() {
                    loop {
                        let field_location = self.location();
                        let field = self.identifier("a field name")?;
                        if fields.iter().any(|(f, _)| *f == field) {
                            return Err(ParseError::at(
                                field_location,
                                format!("field \"{field}\" appears twice in STRUCT"),
                            ));
                        }
                        let field_type = self.data_type(depth + 1)?;
                        fields.push((field, field_type));
                        if !self.eat_token(&Token::Comma) {
                            break;
                        }
                    }
                }
                self.close_angle()?;
                SqlType::Struct(fields)
            }
            other => {
                return Err(ParseError::at(
                    location,
                    format!(
                        "unknown data type \"{other}\"; expected BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL(p, s), STRING, VARCHAR, BYTES, DATE, TIME, TIMESTAMP, ARRAY<...>, MAP<...> or STRUCT<...>"
                    ),
                ));
            }
        };
        Ok(sql_type)
    }

    fn peek_close_angle(&self) -> bool {
        matches!(self.peek(), Some(Token::Gt) | Some(Token::ShiftRight))
    }

    fn close_angle(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(Token::Gt) => {
                self.position += 1;
                Ok(())
            }
            Some(Token::ShiftRight) => {
                // `>>` closes this type and the enclosing one: leave one `>` for the caller.
                let span = self.tokens[self.position].span;
                let second = Location {
                    line: span.start.line,
                    column: span.start.column + 1,
                };
                let replacement = TokenWithSpan {
                    token: Token::Gt,
                    span: Span {
                        start: second,
                        end: span.end,
                    },
                };
                self.tokens[self.position] = replacement.clone();
                self.normalized[self.position] = replacement;
                Ok(())
            }
            _ => Err(self.error("\">\"")),
        }
    }

    fn properties(&mut self) -> Result<Vec<Property>, ParseError> {
        self.expect_token(&Token::LParen)?;
        let mut properties: Vec<Property> = Vec::new();
        loop {
            let location = self.location();
            let name = match self.peek() {
                Some(Token::Word(w)) => w.value.to_uppercase(),
                Some(Token::SingleQuotedString(s)) => s.to_uppercase(),
                _ => return Err(self.error("a property name")),
            };
            self.position += 1;
            self.expect_token(&Token::Eq)?;
            let value = match self.peek() {
                Some(Token::SingleQuotedString(s)) => s.clone(),
                Some(Token::Number(n, _)) => n.clone(),
                Some(Token::Word(w))
                    if w.quote_style.is_none()
                        && (w.value.eq_ignore_ascii_case("true")
                            || w.value.eq_ignore_ascii_case("false")) =>
                {
                    w.value.to_lowercase()
                }
                _ => {
                    return Err(self.error(&format!(
                        "a value for property {name} (a quoted string, number, TRUE or FALSE)"
                    )));
                }
            };
            self.position += 1;
            if properties.iter().any(|p| p.name == name) {
                return Err(ParseError::at(
                    location,
                    format!("property {name} is given twice"),
                ));
            }
            properties.push(Property { name, value });
            if !self.eat_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(&Token::RParen)?;
        Ok(properties)
    }

    fn insert(&mut self) -> Result<Statement, ParseError> {
        self.expect_keyword("INTO")?;
        let target = self.identifier("a stream name")?;
        if self.peek_keyword("SELECT")
            || self.peek_keyword("WITH") && self.peek_nth(1) == Some(&Token::LParen)
        {
            let properties = if self.eat_keyword("WITH") {
                self.properties()?
            } else {
                Vec::new()
            };
            let select = self.select(self.tokens.len())?;
            return Ok(Statement::InsertSelect {
                target,
                properties,
                select: Box::new(select),
            });
        }
        let mut columns = Vec::new();
        if self.eat_token(&Token::LParen) {
            loop {
                columns.push(self.identifier("a column name")?);
                if !self.eat_token(&Token::Comma) {
                    break;
                }
            }
            self.expect_token(&Token::RParen)?;
        }
        if !self.eat_keyword("VALUES") {
            return Err(self.error("VALUES or SELECT"));
        }
        self.expect_token(&Token::LParen)?;
        let close = self.matching_paren(self.position - 1)?;
        let mut values = self.sqlparser(close, |p| p.parse_comma_separated(Parser::parse_expr))?;
        if self.position != close {
            return Err(self.error("\",\" or \")\""));
        }
        self.position = close + 1;
        for value in &mut values {
            normalize(value).map_err(|m| ParseError::at(self.location(), m))?;
        }
        Ok(Statement::InsertValues {
            target,
            columns,
            values,
        })
    }

    /// Index of the `)` matching the `(` at `open`.
    fn matching_paren(&self, open: usize) -> Result<usize, ParseError> {
        let mut depth = 0usize;
        for (i, token) in self.tokens.iter().enumerate().skip(open) {
            match token.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i);
                    }
                }
                _ => {}
            }
        }
        Err(ParseError::at(
            self.end,
            "expected \")\", found end of input",
        ))
    }

    fn show(&mut self) -> Result<Statement, ParseError> {
        let target = if self.eat_keyword("STREAMS") {
            ShowTarget::Streams
        } else if self.eat_keyword("TABLES") {
            ShowTarget::Tables
        } else if self.eat_keyword("TOPICS") {
            ShowTarget::Topics
        } else if self.eat_keyword("QUERIES") {
            ShowTarget::Queries
        } else if self.eat_keyword("PROPERTIES") {
            ShowTarget::Properties
        } else {
            return Err(self.error("STREAMS, TABLES, TOPICS, QUERIES or PROPERTIES"));
        };
        let extended = self.eat_keyword("EXTENDED");
        Ok(Statement::Show { target, extended })
    }

    fn drop(&mut self) -> Result<Statement, ParseError> {
        let kind = self.source_kind()?;
        let if_exists = self.eat_keywords(&["IF", "EXISTS"]);
        let name = self.identifier("a stream or table name")?;
        let delete_topic = self.eat_keywords(&["DELETE", "TOPIC"]);
        Ok(Statement::Drop {
            kind,
            name,
            if_exists,
            delete_topic,
        })
    }

    fn print(&mut self) -> Result<Statement, ParseError> {
        let topic = self.name_as_written("a topic name")?;
        let mut from_beginning = false;
        let mut interval = None;
        let mut limit = None;
        loop {
            if self.eat_keywords(&["FROM", "BEGINNING"]) {
                from_beginning = true;
            } else if self.eat_keyword("INTERVAL") || self.eat_keyword("SAMPLE") {
                interval = Some(
                    self.unsigned("an interval (print every n-th record)")?
                        .max(1),
                );
            } else if self.eat_keyword("LIMIT") {
                limit = Some(self.unsigned("a row count")?);
            } else {
                break;
            }
        }
        Ok(Statement::Print {
            topic,
            from_beginning,
            interval,
            limit,
        })
    }

    fn produce(&mut self) -> Result<Statement, ParseError> {
        self.expect_keyword("TO")?;
        let topic = self.name_as_written("a topic name")?;
        let partition = if self.eat_keyword("PARTITION") {
            let location = self.location();
            let partition = self.integer("a partition number")?;
            Some(
                i32::try_from(partition)
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| {
                        ParseError::at(
                            location,
                            format!("expected a partition number, found {partition}"),
                        )
                    })?,
            )
        } else {
            None
        };
        let key = if self.eat_keyword("KEY") {
            self.optional_string("a quoted key or NULL")?
        } else {
            None
        };
        self.expect_keyword("VALUE")?;
        let value = self.optional_string("a quoted value or NULL")?;
        let timestamp_ms = if self.eat_keyword("TIMESTAMP") {
            Some(self.integer("epoch milliseconds")?)
        } else {
            None
        };
        Ok(Statement::Produce {
            topic,
            partition,
            key,
            value,
            timestamp_ms,
        })
    }

    fn optional_string(&mut self, what: &str) -> Result<Option<String>, ParseError> {
        if self.eat_keyword("NULL") {
            Ok(None)
        } else {
            self.string_literal(what).map(Some)
        }
    }

    /// `TUMBLING (SIZE n UNIT [, RETENTION n UNIT] [, GRACE PERIOD n UNIT])`,
    /// `HOPPING (SIZE n UNIT, ADVANCE BY n UNIT [, ...])` or `SESSION (n UNIT [, ...])`, from the
    /// window type to the `)` at `close`.
    fn window_clause(&mut self, close: usize) -> Result<WindowSpec, ParseError> {
        let start = self.location();
        let kind_word = if self.eat_keyword("TUMBLING") {
            "TUMBLING"
        } else if self.eat_keyword("HOPPING") {
            "HOPPING"
        } else {
            self.expect_keyword("SESSION")?;
            "SESSION"
        };
        self.expect_token(&Token::LParen)?;
        let (mut size, mut advance, mut gap) = (None, None, None);
        let (mut retention, mut grace) = (None, None);
        let mut first = true;
        while self.position < close {
            if !first {
                self.expect_token(&Token::Comma)?;
            }
            let location = self.location();
            let twice = |what: &str| ParseError::at(location, format!("{what} is given twice"));
            if self.eat_keyword("SIZE") {
                if size.replace(self.duration_ms()?).is_some() {
                    return Err(twice("SIZE"));
                }
            } else if self.eat_keywords(&["ADVANCE", "BY"]) {
                if advance.replace(self.duration_ms()?).is_some() {
                    return Err(twice("ADVANCE BY"));
                }
            } else if self.eat_keyword("RETENTION") {
                if retention.replace(self.duration_ms()?).is_some() {
                    return Err(twice("RETENTION"));
                }
            } else if self.eat_keywords(&["GRACE", "PERIOD"]) {
                if grace.replace(self.duration_ms()?).is_some() {
                    return Err(twice("GRACE PERIOD"));
                }
            } else if first && kind_word == "SESSION" {
                gap = Some(self.duration_ms()?);
            } else {
                return Err(self.error(match kind_word {
                    "TUMBLING" => "SIZE, RETENTION or GRACE PERIOD",
                    "HOPPING" => "SIZE, ADVANCE BY, RETENTION or GRACE PERIOD",
                    _ => "RETENTION or GRACE PERIOD",
                }));
            }
            first = false;
        }
        self.expect_token(&Token::RParen)?;
        let missing =
            |what: &str| ParseError::at(start, format!("a {kind_word} window needs {what}"));
        let kind = match kind_word {
            "TUMBLING" => {
                if advance.is_some() {
                    return Err(ParseError::at(
                        start,
                        "a TUMBLING window has no ADVANCE BY\nhint: use a HOPPING window",
                    ));
                }
                WindowKind::Tumbling {
                    size_ms: size.ok_or_else(|| missing("a SIZE"))?,
                }
            }
            "HOPPING" => WindowKind::Hopping {
                size_ms: size.ok_or_else(|| missing("a SIZE"))?,
                advance_ms: advance.ok_or_else(|| missing("an ADVANCE BY"))?,
            },
            _ => {
                if size.is_some() || advance.is_some() {
                    return Err(ParseError::at(
                        start,
                        "a SESSION window has a gap, not a SIZE or ADVANCE BY: SESSION (30 SECONDS)",
                    ));
                }
                WindowKind::Session {
                    gap_ms: gap.ok_or_else(|| missing("a gap: SESSION (30 SECONDS)"))?,
                }
            }
        };
        WindowSpec::new(kind, grace, retention).map_err(|e| ParseError::at(start, e.0))
    }

    /// A stream-stream join's window after `WITHIN`: `n UNIT` or `(before UNIT, after UNIT)`, then
    /// an optional `GRACE PERIOD n UNIT`; stops before `end`.
    fn within_clause(&mut self, end: usize) -> Result<JoinWindow, ParseError> {
        let start = self.location();
        let (before_ms, after_ms) = if self.peek() == Some(&Token::LParen) {
            self.position += 1;
            let before = self.duration_ms()?;
            self.expect_token(&Token::Comma)?;
            let after = self.duration_ms()?;
            self.expect_token(&Token::RParen)?;
            (before, after)
        } else {
            let within = self.duration_ms()?;
            (within, within)
        };
        let grace_ms = if self.position < end && self.eat_keywords(&["GRACE", "PERIOD"]) {
            Some(self.duration_ms()?)
        } else {
            None
        };
        if self.position > end {
            return Err(ParseError::at(
                start,
                "the WITHIN clause runs past the statement",
            ));
        }
        JoinWindow::new(before_ms, after_ms, grace_ms).map_err(|e| ParseError::at(start, e.0))
    }

    /// `n UNIT` (MILLISECOND[S], SECOND[S], MINUTE[S], HOUR[S], DAY[S]) in milliseconds.
    fn duration_ms(&mut self) -> Result<i64, ParseError> {
        let location = self.location();
        let n = self.integer("a duration (a number and a unit, as in 30 SECONDS)")?;
        const UNITS: [(&str, i64); 5] = [
            ("MILLISECOND", 1),
            ("SECOND", 1000),
            ("MINUTE", 60_000),
            ("HOUR", 3_600_000),
            ("DAY", 86_400_000),
        ];
        let unit = match self.peek() {
            Some(Token::Word(w)) if w.quote_style.is_none() => UNITS.iter().find(|(name, _)| {
                let word = w.value.to_ascii_uppercase();
                word == *name || word.strip_suffix('S') == Some(name)
            }),
            _ => None,
        };
        let Some(&(_, unit_ms)) = unit else {
            return Err(self.error("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS)"));
        };
        self.position += 1;
        n.checked_mul(unit_ms)
            .ok_or_else(|| ParseError::at(location, format!("the duration {n} is too large")))
    }

    /// A KSQL SELECT from here to `end`: `PARTITION BY`, `WINDOW` and `EMIT` are taken out at the top
    /// level (outside parentheses) and the rest goes to sqlparser.
    fn select(&mut self, end: usize) -> Result<Select, ParseError> {
        let start = self.position;
        let mut keep: Vec<TokenWithSpan> = Vec::with_capacity(end - start);
        let mut partition_by: Option<(usize, usize)> = None;
        let mut window: Option<WindowSpec> = None;
        let mut within: Vec<Option<JoinWindow>> = Vec::new();
        // `JOIN`s seen at the top level: a `WITHIN` belongs to the last of them.
        let mut joins_seen = 0usize;
        let mut emit = None;
        let mut depth = 0usize;
        let mut i = start;
        let is_word = |tokens: &[TokenWithSpan], i: usize, keyword: &str| matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword));
        let clause_starts = |tokens: &[TokenWithSpan], i: usize| {
            ["GROUP", "HAVING", "EMIT", "LIMIT", "ORDER", "WINDOW"]
                .iter()
                .any(|k| is_word(tokens, i, k))
                || (is_word(tokens, i, "PARTITION") && is_word(tokens, i + 1, "BY"))
        };
        while i < end {
            match self.tokens[i].token {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth == 0 && is_word(&self.tokens, i, "EMIT") {
                if emit.is_some() {
                    return Err(ParseError::at(
                        self.tokens[i].span.start,
                        "EMIT is given twice",
                    ));
                }
                emit = Some(if is_word(&self.tokens, i + 1, "CHANGES") {
                    Emit::Changes
                } else if is_word(&self.tokens, i + 1, "FINAL") {
                    Emit::Final
                } else {
                    self.position = i + 1;
                    return Err(self.error("CHANGES or FINAL after EMIT"));
                });
                i += 2;
                continue;
            }
            if depth == 0
                && is_word(&self.tokens, i, "PARTITION")
                && is_word(&self.tokens, i + 1, "BY")
            {
                if partition_by.is_some() {
                    return Err(ParseError::at(
                        self.tokens[i].span.start,
                        "PARTITION BY is given twice",
                    ));
                }
                let from = i + 2;
                let mut j = from;
                let mut inner = 0usize;
                while j < end {
                    match self.tokens[j].token {
                        Token::LParen => inner += 1,
                        Token::RParen => inner = inner.saturating_sub(1),
                        _ => {}
                    }
                    if inner == 0 && clause_starts(&self.tokens, j) {
                        break;
                    }
                    j += 1;
                }
                partition_by = Some((from, j));
                i = j;
                continue;
            }
            if depth == 0
                && is_word(&self.tokens, i, "WINDOW")
                && ["TUMBLING", "HOPPING", "SESSION"]
                    .iter()
                    .any(|k| is_word(&self.tokens, i + 1, k))
            {
                let open = i + 2;
                if self.tokens.get(open).map(|t| &t.token) != Some(&Token::LParen) {
                    self.position = open;
                    return Err(self.error("\"(\" after the window type"));
                }
                if window.is_some() {
                    return Err(ParseError::at(
                        self.tokens[i].span.start,
                        "WINDOW is given twice",
                    ));
                }
                let close = self.matching_paren(open)?;
                self.position = i + 1;
                window = Some(self.window_clause(close)?);
                i = close + 1;
                continue;
            }
            if depth == 0 && is_word(&self.tokens, i, "JOIN") {
                joins_seen += 1;
            }
            if depth == 0
                && is_word(&self.tokens, i, "WITHIN")
                && !is_word(&self.tokens, i + 1, "GROUP")
            {
                // Before any JOIN it is kept for the first: the planner says where it belongs.
                let join = joins_seen.saturating_sub(1);
                if within.get(join).is_some_and(Option::is_some) {
                    return Err(ParseError::at(
                        self.tokens[i].span.start,
                        "WITHIN is given twice for one join",
                    ));
                }
                self.position = i + 1;
                let window = self.within_clause(end)?;
                if within.len() <= join {
                    within.resize(join + 1, None);
                }
                within[join] = Some(window);
                i = self.position;
                continue;
            }
            keep.push(self.normalized[i].clone());
            i += 1;
        }

        let partition_exprs = match partition_by {
            Some((from, to)) => {
                if from == to {
                    self.position = from;
                    return Err(self.error("an expression after PARTITION BY"));
                }
                self.position = from;
                let exprs = self.sqlparser(to, |p| p.parse_comma_separated(Parser::parse_expr))?;
                if self.position != to {
                    return Err(self.error("\",\" or the end of PARTITION BY"));
                }
                exprs
            }
            None => Vec::new(),
        };

        self.position = start;
        let mut query = self.sqlparser_tokens(keep, end, |p| {
            let query = p.parse_query()?;
            if p.peek_token().token != Token::EOF {
                return p.expected("end of statement", p.peek_token());
            }
            Ok(query)
        })?;
        self.position = end;
        let location = self
            .tokens
            .get(start)
            .map(|t| t.span.start)
            .unwrap_or(self.end);
        normalize(query.as_mut()).map_err(|m| ParseError::at(location, m))?;
        let mut partition_by = partition_exprs;
        for expr in &mut partition_by {
            normalize(expr).map_err(|m| ParseError::at(location, m))?;
        }
        Ok(Select {
            query: *query,
            partition_by,
            window,
            within,
            emit,
        })
    }
}
