//! Command-line flags for the harness's small binaries (the echo backend,
//! the propagation bench): `--flag value` and `--flag=value` alike.

/// Walks the arguments flag by flag; a flag's value is taken on demand.
pub struct Flags<I> {
    args: I,
}

impl Flags<std::iter::Skip<std::env::Args>> {
    /// This process's arguments, without the program name.
    pub fn from_env() -> Self {
        Flags::new(std::env::args().skip(1))
    }
}

impl<I: Iterator<Item = String>> Flags<I> {
    pub fn new(args: I) -> Self {
        Flags { args }
    }

    /// The next flag, with its value when it was written `--flag=value`.
    pub fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let a = self.args.next()?;
        Some(match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a, None),
        })
    }

    /// A flag's value: the inline one, else the next argument.
    pub fn value(&mut self, inline: &Option<String>) -> Option<String> {
        inline.clone().or_else(|| self.args.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_inline_or_from_the_next_argument() {
        let args = ["--a=1", "--b", "2", "-x", "--c"].map(String::from);
        let mut f = Flags::new(args.into_iter());
        let mut seen = Vec::new();
        while let Some((flag, inline)) = f.next_flag() {
            let v = if flag == "-x" { None } else { f.value(&inline) };
            seen.push((flag, v));
        }
        let want = [
            ("--a", Some("1")),
            ("--b", Some("2")),
            ("-x", None),
            ("--c", None),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(f, v)| (f.to_string(), v.map(String::from)))
            .collect();
        assert_eq!(seen, want);
    }
}
