//! Settings that take one of a fixed set of words (`engine = "auto"`, `reload = "replace"`,
//! `providers = ["cuda", "cpu"]`): one parser for config files, environment overrides and
//! the command line, whose error lists the allowed words — instead of serde's
//! "enum EngineChoice does not have variant constructor …".
//!
//! A type opts in with `#[derive(clap::ValueEnum)]` (the words) and [`choice_serde!`]
//! (serde through [`parse`]).

/// Parses `value` as one of `T`'s words, or says which words are allowed.
pub fn parse<T: clap::ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value, false).map_err(|_| {
        let allowed: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| format!("\"{}\"", p.get_name()))
            .collect();
        format!("expected one of {}, got \"{value}\"", allowed.join(", "))
    })
}

/// `Deserialize` (through [`parse`]) and `Serialize` (the word) for a `clap::ValueEnum` type.
#[macro_export]
macro_rules! choice_serde {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = <String as serde::Deserialize>::deserialize(deserializer)?;
                $crate::choice::parse(&word).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let word = clap::ValueEnum::to_possible_value(self).expect("every variant has a word");
                serializer.serialize_str(word.get_name())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::engine::EngineChoice;

    #[test]
    fn errors_list_the_allowed_words() {
        assert_eq!(super::parse::<EngineChoice>("tract"), Ok(EngineChoice::Tract));
        assert_eq!(
            super::parse::<EngineChoice>("onnxruntime").unwrap_err(),
            "expected one of \"auto\", \"ort\", \"tract\", got \"onnxruntime\""
        );
    }
}
