//! A [`TagFilter`] as a SQL condition on the heads' `tags` column: values
//! only ever as parameters, never in the text. `equals` becomes
//! `tags @> $n::jsonb`, which the GIN index (`jsonb_path_ops`) serves;
//! `in` compares `tags ->> key` with an array; `and` / `or` nest in
//! parentheses.

use std::collections::BTreeMap;

use prism_plugin_api::ts::TagFilter;

/// A parameter of a filter condition, in placeholder order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A JSON object text, cast to jsonb.
    Json(String),
    Text(String),
    TextArray(Vec<String>),
}

/// `filter` as SQL on `tags` of the rows aliased `alias`, its parameters
/// numbered from `first`; the parameters are appended to `args`.
pub(crate) fn condition(filter: &TagFilter, alias: &str, first: usize, args: &mut Vec<Arg>) -> String {
    let mut next = |arg: Arg, args: &mut Vec<Arg>| {
        args.push(arg);
        format!("${}", first + args.len() - 1)
    };
    build(filter, alias, args, &mut next)
}

fn build(
    filter: &TagFilter,
    alias: &str,
    args: &mut Vec<Arg>,
    next: &mut impl FnMut(Arg, &mut Vec<Arg>) -> String,
) -> String {
    match filter {
        TagFilter::Equals { key, value } => {
            let object: BTreeMap<&str, &str> = [(key.as_str(), value.as_str())].into();
            // Serialising a map of strings cannot fail; an empty object
            // would match everything, so a failure matches nothing.
            match serde_json::to_string(&object) {
                Ok(json) => format!("({alias}.tags @> {}::text::jsonb)", next(Arg::Json(json), args)),
                Err(_) => "FALSE".to_owned(),
            }
        }
        TagFilter::In { values, .. } if values.is_empty() => "FALSE".to_owned(),
        TagFilter::In { key, values } => {
            let key = next(Arg::Text(key.clone()), args);
            let values = next(Arg::TextArray(values.clone()), args);
            format!("coalesce({alias}.tags ->> {key}::text = ANY({values}::text[]), FALSE)")
        }
        TagFilter::And(all) if all.is_empty() => "TRUE".to_owned(),
        TagFilter::Or(any) if any.is_empty() => "FALSE".to_owned(),
        TagFilter::And(all) => join(all, " AND ", alias, args, next),
        TagFilter::Or(any) => join(any, " OR ", alias, args, next),
    }
}

fn join(
    filters: &[TagFilter],
    operator: &str,
    alias: &str,
    args: &mut Vec<Arg>,
    next: &mut impl FnMut(Arg, &mut Vec<Arg>) -> String,
) -> String {
    let parts: Vec<String> = filters.iter().map(|f| build(f, alias, args, next)).collect();
    format!("({})", parts.join(operator))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(key: &str, value: &str) -> TagFilter {
        TagFilter::Equals { key: key.into(), value: value.into() }
    }

    #[test]
    fn values_are_parameters_never_text() {
        let evil = "x'); DROP TABLE t; --";
        let filter = TagFilter::And(vec![
            eq(evil, evil),
            TagFilter::Or(vec![TagFilter::In { key: evil.into(), values: vec![evil.into()] }, eq("a", "b")]),
        ]);
        let mut args = Vec::new();
        let sql = condition(&filter, "e", 3, &mut args);
        assert!(!sql.contains("DROP"), "{sql}");
        assert_eq!(
            sql,
            "((e.tags @> $3::text::jsonb) AND (coalesce(e.tags ->> $4::text = ANY($5::text[]), FALSE) OR (e.tags @> $6::text::jsonb)))"
        );
        assert_eq!(args.len(), 4);
        assert_eq!(args[1], Arg::Text(evil.into()));
    }

    #[test]
    fn empty_lists_keep_the_contract() {
        let mut args = Vec::new();
        assert_eq!(condition(&TagFilter::And(vec![]), "e", 1, &mut args), "TRUE");
        assert_eq!(condition(&TagFilter::Or(vec![]), "e", 1, &mut args), "FALSE");
        let none = TagFilter::In { key: "k".into(), values: vec![] };
        assert_eq!(condition(&none, "e", 1, &mut args), "FALSE");
        assert!(args.is_empty());
    }
}
