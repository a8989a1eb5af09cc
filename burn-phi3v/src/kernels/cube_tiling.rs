//! [`Kernels::tiled_matmul`](super::Kernels::tiled_matmul) on the CubeCL backends: one of
//! cubek-matmul's routines (tensor cores, or register tiles) with a blueprint built here from a [`MatmulTiling`]
//! (`BlueprintStrategy::Forced`) instead of the one its selector infers. The blueprint follows
//! the selector's own choices for everything the tiling does not set (partition buffering,
//! the cube order and count, load-only planes for the specialised routines, no swizzle).

use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor};
use cubek::matmul::components::global::{InputLoadFlow, LoadFlows};
use cubek::matmul::components::stage::PartitionBuffering;
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulProblem, TilingBlueprint, TilingScheme};
use cubek::matmul::launch::{Strategy, launch_ref};
use cubek::matmul::routines::{BlueprintStrategy, find_instruction_size};
use cubek::std::cube_count::{CubeCountStrategy, GlobalOrder, HypercubeBlueprint, SmAllocation};
use cubek::std::{InputBinding, PartitionSize, StageSize, TileSize};

use super::{MatmulRoutine, MatmulTiling};

/// `lhs · rhs` (`[m, k] · [k, n]`, any strides) at `tiling` into a new contiguous `[m, n]`
/// tensor of `lhs`'s dtype; `Err` (nothing launched) when the tiling or the problem is refused.
pub(crate) fn tiled_matmul<R: CubeRuntime>(lhs: CubeTensor<R>, rhs: CubeTensor<R>, tiling: MatmulTiling) -> Result<CubeTensor<R>, String> {
    let (ls, rs) = (lhs.meta.shape(), rhs.meta.shape());
    if ls.num_dims() != 2 || rs.num_dims() != 2 || ls[1] != rs[0] {
        return Err(format!("operands {:?} · {:?} are not [m, k] · [k, n]", ls.as_slice(), rs.as_slice()));
    }
    let (m, k, n) = (ls[0], ls[1], rs[1]);
    let client = lhs.client.clone();
    // cubek-matmul does not ask: a TMA routine on a device without tensor maps fails at launch,
    // after this returned (session 24: the plugin runtime's f16 checks on the H100).
    if tiling.routine.tma() && !client.properties().features.tma.contains(cubecl::ir::features::Tma::Base) {
        return Err(format!("{} needs tensor maps (TMA), which this device does not offer", tiling.routine.name()));
    }
    let out = empty_device_contiguous_dtype(client.clone(), lhs.device.clone(), [m, n].into(), lhs.dtype);
    if m * n == 0 {
        return Ok(out);
    }
    let globals = MatmulGlobalElems { lhs: lhs.dtype.into(), rhs: rhs.dtype.into(), out: out.dtype.into() };
    let mut dtypes = MatmulElems::from_globals(&globals);
    let kind = match (tiling.routine.unit(), tiling.mma) {
        (true, _) => TileMatmulKind::Register,
        (false, true) => TileMatmulKind::Mma,
        (false, false) => TileMatmulKind::Cmma,
    };
    let (lhs_dtype, rhs_dtype) = (lhs.dtype, rhs.dtype);
    let lhs = InputBinding::new(lhs.binding(), lhs_dtype.into());
    let rhs = InputBinding::new(rhs.binding(), rhs_dtype.into());
    let out_binding = out.clone().binding();
    let address = lhs.required_address_type().max(rhs.required_address_type()).max(out_binding.required_address_type(dtypes.acc_global.size()));
    let problem = MatmulProblem::from_shapes_and_strides(
        lhs.shape().into(),
        rhs.shape().into(),
        out_binding.shape.clone(),
        lhs.data().strides.clone(),
        rhs.data().strides.clone(),
        out_binding.strides.clone(),
        globals,
        address,
        None,
        None,
    )
    .map_err(|e| format!("{e:?}"))?;
    let tile = match tiling.tile {
        Some([tm, tn, tk]) => TileSize::from((tm, tn, tk)),
        None if tiling.routine.unit() => TileSize::from((4, 4, 4)),
        None => find_instruction_size(
            &client,
            (dtypes.lhs_register, dtypes.rhs_register, dtypes.acc_register),
            (m, n, k).into(),
            (None, None, None),
            |c, cfg| kind.is_supported(c, cfg),
            |c, l, r, a| kind.supported_sizes(c, l, r, a),
        )
        .map_err(|e| format!("{e:?}"))?,
    };
    let [pm, pn, pk] = tiling.partition;
    let [sm, sn] = tiling.stage;
    let scheme = TilingScheme::builder()
        .with_tile_size(tile)
        .with_partition_size(PartitionSize::new(pm, pn, pk))
        .with_stage_size(StageSize::new(sm, sn, 1))
        .build()
        .map_err(str::to_string)?;
    // As cubek-matmul's selectors: the one-stage plane routine and the unit routines keep a
    // single partition buffer, the others double it when a plane holds more than one tile
    // along n; units take cubes per SM in the other order.
    let single = tiling.routine == MatmulRoutine::Simple || tiling.routine.unit() || pn < 2;
    let buffering = if single { PartitionBuffering::Single } else { PartitionBuffering::Double };
    let cube_count = match (client.properties().hardware.num_streaming_multiprocessors, tiling.routine.unit()) {
        (Some(num_sms), unit) => CubeCountStrategy::Sm { num_sms, sm_usage: SmAllocation::Exact, cubes_first: !unit },
        (None, false) => CubeCountStrategy::FromProblem,
        (None, true) => CubeCountStrategy::Flattened,
    };
    let hypercube = HypercubeBlueprint::builder().global_order(GlobalOrder::SwizzleRow(4)).cube_count_strategy(cube_count).build();
    let plane_dim = match client.properties().hardware.plane_size_max {
        0 => 32,
        p => p,
    };
    let mut builder = TilingBlueprint::builder(kind, scheme, plane_dim, &problem).partition_buffering(buffering).hypercube_blueprint(hypercube);
    if tiling.routine.specialized() {
        builder = builder.load_specialization_config(LoadFlows { lhs: InputLoadFlow::LoadOnly, rhs: InputLoadFlow::LoadOnly });
    }
    let strategy = strategy(tiling, builder.build());
    // A blueprint the routine cannot honour may fail an assertion inside cubek-matmul rather
    // than return an error: that counts as a refusal too.
    let launched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| launch_ref(&strategy, &client, lhs, rhs, out_binding, &mut dtypes)));
    match launched {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(panic) => Err(format!(
            "cubek-matmul panicked: {}",
            panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("(no message)")
        )),
    }
}

/// cubek-matmul's strategy for the routine and instruction kind of `tiling`, at `blueprint`.
fn strategy(tiling: MatmulTiling, bp: TilingBlueprint) -> Strategy {
    use BlueprintStrategy::Forced;
    use MatmulRoutine::*;
    match (tiling.routine, tiling.mma) {
        (Simple, false) => Strategy::SimpleCyclicCmma(Forced(bp)),
        (Simple, true) => Strategy::SimpleCyclicMma(Forced(bp)),
        (Double, false) => Strategy::DoubleCyclicCmma(Forced(bp)),
        (Double, true) => Strategy::DoubleCyclicMma(Forced(bp)),
        (Ordered, false) => Strategy::OrderedDoubleCmma(Forced(bp)),
        (Ordered, true) => Strategy::OrderedDoubleMma(Forced(bp)),
        (Specialized, false) => Strategy::SpecializedCyclicCmma(Forced(bp)),
        (Specialized, true) => Strategy::SpecializedCyclicMma(Forced(bp)),
        (SimpleTma, false) => Strategy::SimpleTmaCmma(Forced(bp)),
        (SimpleTma, true) => Strategy::SimpleTmaMma(Forced(bp)),
        (DoubleTma, false) => Strategy::DoubleTmaCmma(Forced(bp)),
        (DoubleTma, true) => Strategy::DoubleTmaMma(Forced(bp)),
        (SpecializedTma, false) => Strategy::SpecializedTmaCmma(Forced(bp)),
        (SpecializedTma, true) => Strategy::SpecializedTmaMma(Forced(bp)),
        (SimpleUnit, _) => Strategy::SimpleUnit(Forced(bp)),
        (DoubleUnit, _) => Strategy::DoubleUnit(Forced(bp)),
    }
}
