//! From catalog sources to the record layouts of `eddy-format`.

use datafusion::arrow::datatypes::Field;
use eddy_catalog::Source;
use eddy_format::{
    Format, FormatProperties, RecordDecoder, RecordEncoder, RecordPart, SourceLayout,
};
use eddy_planner::StreamingPlan;

use crate::error::EngineError;

/// Format names Eddy knows.
const FORMATS: &[&str] = &["KAFKA", "JSON", "DELIMITED", "NONE"];

/// Upper-cases and checks a format name.
pub(crate) fn normalize_format(name: &str) -> Result<String, EngineError> {
    let upper = name.trim().to_uppercase();
    if FORMATS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(EngineError::invalid_with_hint(
            format!("unknown format \"{name}\""),
            format!("valid formats are {}", FORMATS.join(", ")),
        ))
    }
}

fn format_of(
    part: RecordPart,
    name: &str,
    delimiter: Option<char>,
    wrap_single_value: Option<bool>,
) -> Result<Format, EngineError> {
    let delimiter = delimiter.map(|c| c.to_string());
    let properties = FormatProperties {
        delimiter: delimiter.as_deref(),
        wrap_single_value,
    };
    Format::parse(part, name, &properties).map_err(|e| EngineError::invalid(e.to_string()))
}

fn layout(
    source: &Source,
    key_fields: Vec<Field>,
    value_fields: Vec<Field>,
) -> Result<SourceLayout, EngineError> {
    SourceLayout::new(
        key_fields,
        value_fields,
        format_of(RecordPart::Key, &source.key_format, None, None)?,
        format_of(
            RecordPart::Value,
            &source.value_format,
            source.value_delimiter,
            source.wrap_single_value,
        )?,
    )
    .map_err(|e| EngineError::invalid(format!("{} \"{}\": {e}", source.kind.noun(), source.name)))
}

fn fields<'a>(columns: impl Iterator<Item = &'a eddy_catalog::Column>) -> Vec<Field> {
    columns
        .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
        .collect()
}

/// The layout records of `source` decode into: pseudo-columns, key columns, value columns.
pub(crate) fn source_layout(source: &Source) -> Result<SourceLayout, EngineError> {
    layout(
        source,
        fields(source.key_columns()),
        fields(source.value_columns()),
    )
}

/// Checks that the formats of `source` can represent its columns.
pub(crate) fn check_formats(source: &Source) -> Result<(), EngineError> {
    let layout = source_layout(source)?;
    RecordDecoder::new(&layout).map_err(|e| {
        EngineError::invalid(format!("{} \"{}\": {e}", source.kind.noun(), source.name))
    })?;
    Ok(())
}

/// The layout of output records written by `plan` to `sink`; the encoder picks the plan's key and
/// value columns by index.
pub(crate) fn sink_layout(
    sink: &Source,
    plan: &StreamingPlan,
) -> Result<SourceLayout, EngineError> {
    let pick = |indices: &[usize]| -> Vec<Field> {
        indices
            .iter()
            .map(|&i| plan.output_schema.field(i).as_ref().clone())
            .collect()
    };
    let layout = layout(sink, pick(&plan.key_columns), pick(&plan.value_columns))?;
    RecordEncoder::new(&layout).map_err(|e| {
        EngineError::invalid(format!("{} \"{}\": {e}", sink.kind.noun(), sink.name))
    })?;
    Ok(layout)
}

/// The layout of `sink`'s own columns, for `INSERT INTO ... VALUES`.
pub(crate) fn value_layout(sink: &Source) -> Result<SourceLayout, EngineError> {
    source_layout(sink)
}

/// The source's `TIMESTAMP_FORMAT`, parsed (checked when the source was created).
pub(crate) fn timestamp_format(
    source: &Source,
) -> Result<Option<eddy_format::TimestampFormat>, EngineError> {
    source
        .timestamp_format
        .as_deref()
        .map(eddy_format::TimestampFormat::new)
        .transpose()
        .map_err(|e| EngineError::invalid(e.to_string()))
}

/// Index in the decoded batch of the source's `TIMESTAMP` column.
pub(crate) fn timestamp_index(source: &Source) -> Option<usize> {
    let name = source.timestamp_column.as_deref()?;
    source.arrow_schema().index_of(name).ok()
}
