//! [`MatmulTiling`]: a tensor-core matmul of CubeCL's (cubek-matmul) at a tiling chosen here
//! instead of the one its selector infers, for the large products of a prefill and of the
//! vision tower (issue 10, lever 5: Burn's autotune only tries the inferred tiling of each
//! routine, ~160–220 TFLOP/s on an H200 where cuBLAS does ~790).

use std::fmt;
use std::sync::RwLock;

/// cubek-matmul's global routine (how the operands reach shared memory) behind a
/// [`MatmulTiling`]; the names are those of Burn's autotune candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulRoutine {
    /// One stage in shared memory, loaded cyclically by every plane (`simple_cyclic`).
    Simple,
    /// Two stages, loaded cyclically (`double_cyclic`).
    Double,
    /// Two stages, the k loop ordered per plane (`ordered_double`).
    Ordered,
    /// Planes specialised in loading or computing, cyclic loads (`specialized_cyclic`).
    Specialized,
    /// One stage loaded by the tensor memory accelerator (`simple_tma`; Hopper and later).
    SimpleTma,
    /// Two stages loaded by the tensor memory accelerator (`double_tma`).
    DoubleTma,
    /// Load and compute planes with TMA loads (`specialized_tma`).
    SpecializedTma,
    /// No tensor cores: each unit multiplies register tiles (`simple_unit`), one stage. Any
    /// GPU, wgpu without cooperative matrices included; f32 works.
    SimpleUnit,
    /// Register tiles, two stages (`double_unit`).
    DoubleUnit,
}

impl MatmulRoutine {
    /// Every routine with its name in [`MatmulTiling::parse`]'s syntax.
    pub const ALL: [(&'static str, MatmulRoutine); 9] = [
        ("simple", Self::Simple),
        ("double", Self::Double),
        ("ordered", Self::Ordered),
        ("specialized", Self::Specialized),
        ("simple_tma", Self::SimpleTma),
        ("double_tma", Self::DoubleTma),
        ("specialized_tma", Self::SpecializedTma),
        ("simple_unit", Self::SimpleUnit),
        ("double_unit", Self::DoubleUnit),
    ];

    /// The routine's name in [`MatmulTiling::parse`]'s syntax.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, r)| *r == self).map_or("?", |(n, _)| n)
    }

    /// Whether planes specialise in loading (the blueprint carries a load-only flow).
    pub fn specialized(self) -> bool {
        matches!(self, Self::Specialized | Self::SpecializedTma)
    }

    /// Whether the routine loads through the tensor memory accelerator (tensor maps): only
    /// where the device lists TMA among its features (CUDA on Hopper and later, not the plugin
    /// runtime, whose ABI has no tensor maps).
    pub fn tma(self) -> bool {
        matches!(self, Self::SimpleTma | Self::DoubleTma | Self::SpecializedTma)
    }

    /// Whether units multiply register tiles (no tensor cores): the stage counts units, not
    /// planes, and the instruction size is a register tile's.
    pub fn unit(self) -> bool {
        matches!(self, Self::SimpleUnit | Self::DoubleUnit)
    }
}

/// A matmul tiling: each plane (warp) computes `partition[0] × partition[1]` tiles of the
/// output and steps `partition[2]` tiles along `k`; a cube holds `stage[0] × stage[1]` planes
/// (so its block of the output is `stage · partition · tile`); `tile` is the tensor-core
/// instruction's `m × n × k` (`None`: the one cubek-matmul picks for the problem, 16×16×16
/// for square-ish bf16 problems on CUDA). `mma` selects the explicit `mma` instructions instead
/// of `cmma` (wmma) fragments. For the unit routines ([`MatmulRoutine::unit`]) the stage
/// counts units and `tile` is each unit's register tile (default 4×4×4).
///
/// Text form (`PHI3V_MATMUL`, `PHI3V_MATMUL_FEW`, `phi3v bench matmul --tilings`):
/// `ROUTINE[-mma]:PM,PN,PK:SM,SN[:TM,TN,TK]`, e.g. `specialized_tma:4,4,2:2,2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulTiling {
    /// How the operands reach shared memory.
    pub routine: MatmulRoutine,
    /// Explicit `mma` instructions instead of `cmma` fragments.
    pub mma: bool,
    /// Tiles per plane (or unit) along m, n, k (each 1–16; m·n ≤ 64).
    pub partition: [u32; 3],
    /// Planes per cube along m, n (each 1–16; product ≤ 32); units for the unit routines
    /// (each 1–64; product ≤ 1024).
    pub stage: [u32; 2],
    /// Instruction size m, n, k (each 8, 16 or 32); a unit's register tile (each 1, 2, 4 or 8).
    pub tile: Option<[u32; 3]>,
}

impl MatmulTiling {
    /// Whether the values are in range (the routine may still refuse the tiling at launch).
    pub fn is_valid(&self) -> bool {
        let [pm, pn, pk] = self.partition;
        let [sm, sn] = self.stage;
        let each = |v: u32| (1..=16).contains(&v);
        let partition = [pm, pn, pk].into_iter().all(each) && pm * pn <= 64;
        if self.routine.unit() {
            let stage = [sm, sn].iter().all(|v| (1..=64).contains(v)) && sm * sn <= 1024;
            return partition && stage && !self.mma && self.tile.is_none_or(|t| t.iter().all(|v| matches!(v, 1 | 2 | 4 | 8)));
        }
        partition && each(sm) && each(sn) && sm * sn <= 32 && self.tile.is_none_or(|t| t.iter().all(|v| matches!(v, 8 | 16 | 32)))
    }

    /// Reads the text form; `None` when it is malformed or out of range.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.trim().split(':').map(str::trim).collect();
        let (name, mma) = match parts.first()?.strip_suffix("-mma") {
            Some(name) => (name, true),
            None => (parts[0], false),
        };
        let routine = MatmulRoutine::ALL.iter().find(|(n, _)| *n == name)?.1;
        let numbers = |p: &str| -> Option<Vec<u32>> { p.split(',').map(|v| v.trim().parse().ok()).collect() };
        let partition: [u32; 3] = numbers(parts.get(1)?)?.try_into().ok()?;
        let stage: [u32; 2] = numbers(parts.get(2)?)?.try_into().ok()?;
        let tile = match parts.get(3) {
            None => None,
            Some(t) => Some(numbers(t)?.try_into().ok()?),
        };
        if parts.len() > 4 {
            return None;
        }
        let tiling = Self { routine, mma, partition, stage, tile };
        tiling.is_valid().then_some(tiling)
    }
}

impl fmt::Display for MatmulTiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [pm, pn, pk] = self.partition;
        let [sm, sn] = self.stage;
        write!(f, "{}{}:{pm},{pn},{pk}:{sm},{sn}", self.routine.name(), if self.mma { "-mma" } else { "" })?;
        if let Some([tm, tn, tk]) = self.tile {
            write!(f, ":{tm},{tn},{tk}")?;
        }
        Ok(())
    }
}

/// The products a [`matmul_tiling`] is set for, by their rows: a tiling that suits a prefill's
/// thousands of rows does not suit a static decode batch's few dozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulRows {
    /// More than [`super::skinny_max_rows`] and fewer than [`MATMUL_MANY_ROWS`] (decode steps of
    /// many sequences; `PHI3V_MATMUL_FEW`).
    Few,
    /// [`MATMUL_MANY_ROWS`] or more (prefill, the vision tower; `PHI3V_MATMUL`).
    Many,
}

/// Fewest rows of a [`MatmulRows::Many`] product.
pub const MATMUL_MANY_ROWS: usize = 128;

impl MatmulRows {
    /// The class of a product over `rows` rows; `None` for the skinny kernel's rows.
    pub fn of(rows: usize) -> Option<Self> {
        match rows {
            r if r >= MATMUL_MANY_ROWS => Some(Self::Many),
            r if r > super::skinny_max_rows() => Some(Self::Few),
            _ => None,
        }
    }

    /// The environment variable that sets the class's tiling.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Few => "PHI3V_MATMUL_FEW",
            Self::Many => "PHI3V_MATMUL",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per [`MatmulRows`]: `None` inside = Burn's autotuned matmul; the outer `None` = not read
/// from the environment yet.
static MATMUL_TILINGS: RwLock<[Option<Option<MatmulTiling>>; 2]> = RwLock::new([None, None]);

/// The tiling [`super::linear`] runs the products of a [`MatmulRows`] class at on the CubeCL
/// backends; `None` (the default) leaves them to Burn's autotuned matmul. The class's
/// environment variable ([`MatmulRows::env_var`]) sets it for a process (read once; `burn` or
/// unset: `None`; an invalid value is ignored), [`set_matmul_tiling`] at any time.
pub fn matmul_tiling(rows: MatmulRows) -> Option<MatmulTiling> {
    if let Some(choice) = MATMUL_TILINGS.read().unwrap_or_else(|e| e.into_inner())[rows.index()] {
        return choice;
    }
    let choice = std::env::var(rows.env_var()).ok().and_then(|v| MatmulTiling::parse(&v));
    set_matmul_tiling(rows, choice);
    choice
}

/// Sets [`matmul_tiling`] of a class for every later call; `false` (nothing changed) for an
/// invalid tiling.
pub fn set_matmul_tiling(rows: MatmulRows, tiling: Option<MatmulTiling>) -> bool {
    if tiling.is_some_and(|t| !t.is_valid()) {
        return false;
    }
    MATMUL_TILINGS.write().unwrap_or_else(|e| e.into_inner())[rows.index()] = Some(tiling);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilings_parse_print_and_reject_what_is_out_of_range() {
        let t = MatmulTiling::parse("specialized_tma:4,4,2:2,2").unwrap();
        assert_eq!((t.routine, t.mma, t.partition, t.stage, t.tile), (MatmulRoutine::SpecializedTma, false, [4, 4, 2], [2, 2], None));
        let m = MatmulTiling::parse(" double-mma : 2,8,2 : 4,1 : 16,8,16 ").unwrap();
        assert!(m.mma && m.tile == Some([16, 8, 16]) && m.routine == MatmulRoutine::Double);
        let u = MatmulTiling::parse("simple_unit:2,2,2:16,16:4,4,4").unwrap();
        assert!(u.routine.unit() && u.stage == [16, 16]);
        for s in ["specialized_tma:4,4,2:2,2", "double-mma:2,8,2:4,1:16,8,16", "simple:1,1,1:1,1", "double_unit:1,2,2:8,32:1,4,4"] {
            assert_eq!(MatmulTiling::parse(s).unwrap().to_string(), s);
        }
        for (name, routine) in MatmulRoutine::ALL {
            assert_eq!(routine.name(), name);
            assert_eq!(MatmulTiling::parse(&format!("{name}:1,2,2:2,1")).unwrap().routine, routine);
        }
        assert_eq!(MatmulRows::of(super::super::skinny_max_rows()), None);
        assert_eq!(MatmulRows::of(super::super::skinny_max_rows() + 1), Some(MatmulRows::Few));
        assert_eq!(MatmulRows::of(MATMUL_MANY_ROWS - 1), Some(MatmulRows::Few));
        assert_eq!(MatmulRows::of(MATMUL_MANY_ROWS), Some(MatmulRows::Many));
        for bad in [
            "", "burn", "fast:1,1,1:1,1", "simple", "simple:1,1:1,1", "simple:1,1,1:1", "simple:0,1,1:1,1", "simple:17,1,1:1,1",
            "simple:16,8,1:1,1", "simple:1,1,1:8,8", "simple:1,1,1:1,1:12,16,16", "simple:1,1,1:1,1:16,16", "simple:1,1,1:1,1:16,16,16:x",
            "simple-cmma:1,1,1:1,1", "simple:a,1,1:1,1", "simple_unit-mma:1,1,1:16,16", "simple_unit:1,1,1:64,32", "simple_unit:1,1,1:8,8:16,16,16",
            "simple:1,1,1:16,16",
        ] {
            assert!(MatmulTiling::parse(bad).is_none(), "{bad}");
        }
    }
}
