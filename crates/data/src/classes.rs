//! Class tables: which label ids exist, their names, colours (for colour maps), Cityscapes
//! train ids (for 19-class mIoU) and whether a class has instances (for edge maps).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    pub id: u16,
    pub name: String,
    pub color: [u8; 3],
    /// Evaluation id (Cityscapes `trainId`); `None` = ignored by mIoU.
    #[serde(default)]
    pub train_id: Option<u16>,
    /// Whether pixels of this class carry instance ids (`id * 1000 + k` in instanceIds).
    #[serde(default)]
    pub has_instances: bool,
}

/// The label ids a dataset may use. Label maps with ids outside it are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassTable {
    pub name: String,
    pub classes: Vec<ClassInfo>,
    /// Channels of the one-hot encoding fed to GauGAN/Pix2PixHD. May exceed the largest id
    /// + 1: SPADE and pix2pixHD use 35 for Cityscapes (ids 0..=33 plus an unused channel).
    pub onehot_channels: usize,
}

/// File name of a dataset's own class table, in its root.
pub const CLASSES_FILE: &str = "classes.json";

impl ClassTable {
    /// Cityscapes `labelIds` (cityscapesScripts `labels.py`), with the 35-channel one-hot of
    /// SPADE/pix2pixHD. The license plate (id -1) never appears in `labelIds` images.
    pub fn cityscapes() -> Self {
        #[rustfmt::skip]
        const T: [(&str, [u8; 3], u16, bool); 34] = [
            ("unlabeled", [0, 0, 0], 255, false), ("ego vehicle", [0, 0, 0], 255, false),
            ("rectification border", [0, 0, 0], 255, false), ("out of roi", [0, 0, 0], 255, false),
            ("static", [0, 0, 0], 255, false), ("dynamic", [111, 74, 0], 255, false),
            ("ground", [81, 0, 81], 255, false), ("road", [128, 64, 128], 0, false),
            ("sidewalk", [244, 35, 232], 1, false), ("parking", [250, 170, 160], 255, false),
            ("rail track", [230, 150, 140], 255, false), ("building", [70, 70, 70], 2, false),
            ("wall", [102, 102, 156], 3, false), ("fence", [190, 153, 153], 4, false),
            ("guard rail", [180, 165, 180], 255, false), ("bridge", [150, 100, 100], 255, false),
            ("tunnel", [150, 120, 90], 255, false), ("pole", [153, 153, 153], 5, false),
            ("polegroup", [153, 153, 153], 255, false), ("traffic light", [250, 170, 30], 6, false),
            ("traffic sign", [220, 220, 0], 7, false), ("vegetation", [107, 142, 35], 8, false),
            ("terrain", [152, 251, 152], 9, false), ("sky", [70, 130, 180], 10, false),
            ("person", [220, 20, 60], 11, true), ("rider", [255, 0, 0], 12, true),
            ("car", [0, 0, 142], 13, true), ("truck", [0, 0, 70], 14, true),
            ("bus", [0, 60, 100], 15, true), ("caravan", [0, 0, 90], 255, true),
            ("trailer", [0, 0, 110], 255, true), ("train", [0, 80, 100], 16, true),
            ("motorcycle", [0, 0, 230], 17, true), ("bicycle", [119, 11, 32], 18, true),
        ];
        ClassTable {
            name: "cityscapes".into(),
            classes: T
                .iter()
                .enumerate()
                .map(|(id, &(name, color, tid, inst))| ClassInfo {
                    id: id as u16,
                    name: name.into(),
                    color,
                    train_id: (tid != 255).then_some(tid),
                    has_instances: inst,
                })
                .collect(),
            onehot_channels: 35,
        }
    }

    /// Reads `classes.json` from a dataset root, if present.
    pub fn load_from_root(root: &Path) -> Result<Option<Self>> {
        let path = root.join(CLASSES_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let t: ClassTable =
            serde_json::from_str(&text).map_err(|e| DataError::bad(&path, e.to_string()))?;
        t.validate().map_err(|r| DataError::bad(&path, r))?;
        Ok(Some(t))
    }

    /// Checks ids are unique and fit the one-hot width.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.classes.is_empty() {
            return Err("class table is empty".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.classes {
            if !seen.insert(c.id) {
                return Err(format!("class id {} appears twice", c.id));
            }
            if c.id as usize >= self.onehot_channels {
                return Err(format!(
                    "class id {} does not fit onehot_channels {}",
                    c.id, self.onehot_channels
                ));
            }
        }
        Ok(())
    }

    /// A dense lookup `id -> known?` for fast validation of label maps.
    pub fn known_ids(&self) -> Vec<bool> {
        let mut v = vec![false; self.onehot_channels.max(1)];
        for c in &self.classes {
            v[c.id as usize] = true;
        }
        v
    }

    pub fn get(&self, id: u16) -> Option<&ClassInfo> {
        self.classes.iter().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cityscapes_table_matches_the_reference_layout() {
        let t = ClassTable::cityscapes();
        t.validate().unwrap();
        assert_eq!(t.classes.len(), 34);
        assert_eq!(t.onehot_channels, 35);
        let train: Vec<_> = t.classes.iter().filter_map(|c| c.train_id).collect();
        assert_eq!(train, (0..19).collect::<Vec<_>>());
        assert_eq!(t.get(26).unwrap().name, "car");
        assert_eq!(t.get(7).unwrap().color, [128, 64, 128]);
        assert!(!t.known_ids()[34]);
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut t = ClassTable::cityscapes();
        t.classes[1].id = 0;
        assert!(t.validate().unwrap_err().contains("twice"));
    }
}
