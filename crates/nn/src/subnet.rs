//! Sub-net configs and search spaces.
//!
//! A [`SubnetConfig`] picks one width per elastic position and a present/skipped switch per
//! depth-elastic block. It is always passed to `forward` as an argument: a supernet holds no
//! "active sub-net" state, so several sub-nets can be run from the same weights in one step
//! (sandwich rule) without any setter calls.
//!
//! String form (see `docs/config-strings.md`): `w=16_16_32_24;d=1_1_0_1`. `w` lists widths in
//! search-space position order, `d` lists `1` (present) / `0` (skipped) per depth-elastic
//! block. A family without depth-elastic blocks writes `d=` (empty); parsing also accepts
//! the `d` part missing.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, RngExt};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::NnError;

/// One sub-net of a supernet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubnetConfig {
    /// Active width per elastic position (search-space order).
    pub widths: Vec<i64>,
    /// Present (`true`) or skipped per depth-elastic block (search-space order).
    pub depth: Vec<bool>,
}

impl SubnetConfig {
    /// Whether block `i` is present; blocks past the end of `depth` count as present.
    pub fn block_present(&self, i: usize) -> bool {
        self.depth.get(i).copied().unwrap_or(true)
    }
}

impl fmt::Display for SubnetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
        let d: Vec<&str> = self
            .depth
            .iter()
            .map(|&b| if b { "1" } else { "0" })
            .collect();
        write!(f, "w={};d={}", w.join("_"), d.join("_"))
    }
}

impl FromStr for SubnetConfig {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |token: &str, reason: &str| NnError::ConfigString {
            token: token.to_string(),
            reason: reason.to_string(),
        };
        let mut widths = None;
        let mut depth = None;
        for part in s.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let part = part.trim();
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(part, "expected `w=...` or `d=...`"))?;
            let items: Vec<&str> = if value.trim().is_empty() {
                Vec::new()
            } else {
                value.split('_').map(str::trim).collect()
            };
            match key.trim() {
                "w" => {
                    if widths.is_some() {
                        return Err(err(part, "`w` given twice"));
                    }
                    let mut v = Vec::with_capacity(items.len());
                    for it in items {
                        match it.parse::<i64>() {
                            Ok(n) if n >= 1 => v.push(n),
                            _ => return Err(err(it, "a width must be an integer >= 1")),
                        }
                    }
                    widths = Some(v);
                }
                "d" => {
                    if depth.is_some() {
                        return Err(err(part, "`d` given twice"));
                    }
                    let mut v = Vec::with_capacity(items.len());
                    for it in items {
                        match it {
                            "1" => v.push(true),
                            "0" => v.push(false),
                            _ => return Err(err(it, "a depth switch must be 0 or 1")),
                        }
                    }
                    depth = Some(v);
                }
                other => return Err(err(other, "unknown key (expected `w` or `d`)")),
            }
        }
        let widths = widths.ok_or_else(|| err(s, "missing the `w=` part"))?;
        Ok(SubnetConfig {
            widths,
            depth: depth.unwrap_or_default(),
        })
    }
}

impl Serialize for SubnetConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SubnetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The choices at one elastic width position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WidthChoice {
    /// Human-readable name of the position (e.g. `down1`, `block3.inner`).
    pub name: String,
    /// Width of the full (largest) model at this position.
    pub full: i64,
    /// Allowed widths, ascending; the last one equals `full`.
    pub choices: Vec<i64>,
}

/// One depth-elastic block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockChoice {
    pub name: String,
    /// Whether a sub-net may skip the block (otherwise its switch must be `1`).
    pub skippable: bool,
}

/// The sub-nets one supernet contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchSpace {
    pub widths: Vec<WidthChoice>,
    pub blocks: Vec<BlockChoice>,
}

impl SearchSpace {
    /// The full model: the widest choice everywhere, every block present.
    pub fn largest(&self) -> SubnetConfig {
        SubnetConfig {
            widths: self.widths.iter().map(|w| w.full).collect(),
            depth: vec![true; self.blocks.len()],
        }
    }

    /// The narrowest choice everywhere, every skippable block skipped.
    pub fn smallest(&self) -> SubnetConfig {
        SubnetConfig {
            widths: self.widths.iter().map(|w| w.choices[0]).collect(),
            depth: self.blocks.iter().map(|b| !b.skippable).collect(),
        }
    }

    /// A uniformly random sub-net: each width uniform over its choices, each skippable block
    /// present with probability 1/2.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> SubnetConfig {
        SubnetConfig {
            widths: self
                .widths
                .iter()
                .map(|w| w.choices[rng.random_range(0..w.choices.len())])
                .collect(),
            depth: self
                .blocks
                .iter()
                .map(|b| !b.skippable || rng.random_bool(0.5))
                .collect(),
        }
    }

    /// Checks that `sub` belongs to this space; the error says which position is wrong.
    pub fn check(&self, sub: &SubnetConfig) -> Result<(), NnError> {
        let bad = |reason: String| NnError::NotInSpace {
            config: sub.to_string(),
            reason,
        };
        if sub.widths.len() != self.widths.len() {
            return Err(bad(format!(
                "{} widths given, the space has {} positions",
                sub.widths.len(),
                self.widths.len()
            )));
        }
        if sub.depth.len() != self.blocks.len() {
            return Err(bad(format!(
                "{} depth switches given, the space has {} blocks",
                sub.depth.len(),
                self.blocks.len()
            )));
        }
        for (i, (w, c)) in sub.widths.iter().zip(&self.widths).enumerate() {
            if !c.choices.contains(w) {
                return Err(bad(format!(
                    "width {w} at position {i} ({}) is not one of {:?}",
                    c.name, c.choices
                )));
            }
        }
        for (i, (d, b)) in sub.depth.iter().zip(&self.blocks).enumerate() {
            if !d && !b.skippable {
                return Err(bad(format!("block {i} ({}) cannot be skipped", b.name)));
            }
        }
        Ok(())
    }

    /// Whether `sub` belongs to this space.
    pub fn contains(&self, sub: &SubnetConfig) -> bool {
        self.check(sub).is_ok()
    }

    /// Number of sub-nets in the space (saturating).
    pub fn size(&self) -> u128 {
        let w = self
            .widths
            .iter()
            .fold(1u128, |a, c| a.saturating_mul(c.choices.len() as u128));
        self.blocks
            .iter()
            .filter(|b| b.skippable)
            .fold(w, |a, _| a.saturating_mul(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn space() -> SearchSpace {
        SearchSpace {
            widths: vec![
                WidthChoice {
                    name: "a".into(),
                    full: 8,
                    choices: vec![2, 4, 8],
                },
                WidthChoice {
                    name: "b".into(),
                    full: 16,
                    choices: vec![4, 16],
                },
            ],
            blocks: vec![
                BlockChoice {
                    name: "block0".into(),
                    skippable: false,
                },
                BlockChoice {
                    name: "block1".into(),
                    skippable: true,
                },
            ],
        }
    }

    #[test]
    fn string_round_trip() {
        let c: SubnetConfig = "w=16_8_32;d=1_0".parse().unwrap();
        assert_eq!(c.widths, vec![16, 8, 32]);
        assert_eq!(c.depth, vec![true, false]);
        assert_eq!(c.to_string(), "w=16_8_32;d=1_0");
        let e: SubnetConfig = "w=4".parse().unwrap();
        assert!(e.depth.is_empty());
        assert_eq!(e.to_string(), "w=4;d=");
        assert_eq!(e.to_string().parse::<SubnetConfig>().unwrap(), e);
    }

    #[test]
    fn parse_errors_name_the_token() {
        for (s, tok) in [
            ("w=16_x_8", "`x`"),
            ("w=16;d=1_2", "`2`"),
            ("w=16;q=1", "`q`"),
            ("d=1", "missing"),
            ("w=0", "`0`"),
            ("w16", "`w16`"),
        ] {
            let e = s.parse::<SubnetConfig>().unwrap_err().to_string();
            assert!(e.contains(tok), "{s}: {e}");
        }
    }

    #[test]
    fn largest_smallest_sample_contains() {
        let s = space();
        assert_eq!(s.largest().to_string(), "w=8_16;d=1_1");
        assert_eq!(s.smallest().to_string(), "w=2_4;d=1_0");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let c = s.sample(&mut rng);
            assert!(s.contains(&c), "{c}");
            seen.insert(c);
        }
        assert_eq!(seen.len() as u128, s.size());
        let bad: SubnetConfig = "w=3_16;d=1_1".parse().unwrap();
        assert!(
            s.check(&bad)
                .unwrap_err()
                .to_string()
                .contains("position 0 (a)")
        );
        let bad: SubnetConfig = "w=2_16;d=0_1".parse().unwrap();
        assert!(s.check(&bad).unwrap_err().to_string().contains("block0"));
        let bad: SubnetConfig = "w=2;d=1_1".parse().unwrap();
        assert!(!s.contains(&bad));
    }
}
