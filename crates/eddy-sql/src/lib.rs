//! The KSQL dialect: statement AST and parser on top of sqlparser, with line/column positions in errors.
