//! Architecture names and configs: *what* network to build, kept apart from its weights.
//!
//! The types live in `ugc-kinds` (libtorch-free, so the head validates a stage's `arch`
//! map at plan time with the same code); they are re-exported here so that every
//! `ugc_nn::arch::*` path keeps working.

pub use ugc_kinds::arch::*;

use crate::error::NnError;

impl From<ArchError> for NnError {
    fn from(e: ArchError) -> Self {
        match e {
            ArchError::InvalidConfig {
                field,
                value,
                reason,
            } => NnError::InvalidConfig {
                field,
                value,
                reason,
            },
            ArchError::UnknownArch(name) => NnError::UnknownArch(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pix2pix_models_refuse_spectral_norms_by_name() {
        assert!(NormKind::Batch.require_pix2pix("UNet").is_ok());
        let e = NormKind::SpectralInstance
            .require_pix2pix("UNet")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("norm = SpectralInstance") && e.contains("UNet takes instance"),
            "{e}"
        );
    }

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(j, format!("\"{}\"", a.name()));
        }
        let e = "resnet".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("`resnet`"), "{e}");
    }

    #[test]
    fn candidates_are_sorted_unique_and_include_full() {
        let s = SpaceSpec::default();
        assert_eq!(s.candidates(64), vec![16, 24, 32, 48, 64]);
        assert_eq!(s.candidates(3), vec![1, 2, 3]);
    }

    #[test]
    fn config_json_round_trip_and_validation() {
        let c = ArchConfig::new(Arch::Pix2PixUnet);
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(ArchConfig::from_json(&j).unwrap(), c);
        let bad = ArchConfig { ngf: 0, ..c };
        assert!(bad.validate().unwrap_err().to_string().contains("ngf"));
    }
}
