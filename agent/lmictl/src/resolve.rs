//! Environment ids given by a unique prefix, as crictl and docker accept them: an id that is whole wins; else
//! a prefix of exactly one environment's id stands for it; a prefix of several is an error listing them; a
//! prefix of none is passed on as given (the agent then answers NOT_FOUND, in its own words).

use lmi_proto::v1::Environment;

use crate::render::state_name;

/// The most matches an ambiguity error lists.
const MAX_LISTED: usize = 10;

/// A prefix matching several environments.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Ambiguous(String);

/// The id `given` stands for among `envs`: `Ok(Some(id))` for an exact or unique-prefix match, `Ok(None)`
/// when nothing matches.
pub fn resolve(given: &str, envs: &[Environment]) -> Result<Option<String>, Ambiguous> {
    if let Some(env) = envs.iter().find(|e| e.id == given) {
        return Ok(Some(env.id.clone()));
    }
    let mut matches: Vec<&Environment> = envs.iter().filter(|e| e.id.starts_with(given)).collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(Some(matches[0].id.clone())),
        n => {
            matches.sort_by(|a, b| a.id.cmp(&b.id));
            let mut text = format!(
                "environment id prefix `{given}` matches {n} environments; give more of the id:"
            );
            for env in matches.iter().take(MAX_LISTED) {
                let (name, version) =
                    env.spec
                        .as_ref()
                        .and_then(|s| s.function.as_ref())
                        .map_or(("?", "?"), |f| {
                            (
                                f.name.as_str(),
                                if f.version.is_empty() {
                                    "$LATEST"
                                } else {
                                    f.version.as_str()
                                },
                            )
                        });
                text.push_str(&format!(
                    "\n  {}  {name}:{version}  {}",
                    env.id,
                    state_name(env.state)
                ));
            }
            if n > MAX_LISTED {
                text.push_str(&format!("\n  … and {} more", n - MAX_LISTED));
            }
            Err(Ambiguous(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::sample_env;
    use lmi_proto::v1::EnvironmentState;

    fn envs(ids: &[&str]) -> Vec<Environment> {
        ids.iter()
            .map(|id| sample_env(id, EnvironmentState::Ready))
            .collect()
    }

    #[test]
    fn unique_prefix_exact_and_none() {
        let e = envs(&["ab12", "ab34", "cd56", "ab"]);
        assert_eq!(resolve("cd", &e).unwrap().as_deref(), Some("cd56"));
        assert_eq!(resolve("ab1", &e).unwrap().as_deref(), Some("ab12"));
        assert_eq!(
            resolve("ab", &e).unwrap().as_deref(),
            Some("ab"),
            "a whole id wins over the ids it prefixes"
        );
        assert_eq!(resolve("zz", &e).unwrap(), None);
        assert_eq!(resolve("cd56", &e).unwrap().as_deref(), Some("cd56"));
    }

    #[test]
    fn ambiguous_prefix_lists_the_matches() {
        let e = envs(&["ab34", "ab12", "cd56"]);
        let err = resolve("a", &e).unwrap_err().to_string();
        assert!(
            err.starts_with("environment id prefix `a` matches 2 environments"),
            "{err}"
        );
        let lines: Vec<&str> = err.lines().skip(1).collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].trim_start().starts_with("ab12  "), "{err}");
        assert!(lines[1].trim_start().starts_with("ab34  "), "{err}");
        assert!(lines[0].ends_with("READY"), "{err}");
        let many: Vec<String> = (0..12).map(|i| format!("x{i:02}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = resolve("x", &envs(&refs)).unwrap_err().to_string();
        assert!(err.ends_with("… and 2 more"), "{err}");
    }
}
