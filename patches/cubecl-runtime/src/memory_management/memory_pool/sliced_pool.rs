use crate::{
    memory_management::{
        BytesFormat, ManagedMemoryHandle, MemoryLocation, MemoryUsage,
        memory_pool::{MemoryPage, MemoryPool, Slice},
    },
    server::IoError,
    storage::StorageId,
};
use alloc::vec::Vec;
use core::fmt::Display;

pub struct SlicedPool {
    pages: Vec<(MemoryPage, StorageId)>,
    pages_tmp: Vec<(MemoryPage, StorageId)>,
    page_size: u64,
    alignment: u64,
    max_alloc_size: u64,
    location_base: MemoryLocation,
}

impl SlicedPool {
    pub fn new(page_size: u64, max_slice_size: u64, alignment: u64, pool_pos: u8) -> Self {
        Self {
            pages: Vec::new(),
            pages_tmp: Vec::new(),
            page_size,
            alignment,
            max_alloc_size: max_slice_size,
            location_base: MemoryLocation::new(pool_pos, 0, 0),
        }
    }
}

impl MemoryPool for SlicedPool {
    fn accept(&self, size: u64) -> bool {
        self.max_alloc_size >= size
            ||
            // If the size is close to the page size so it doesn't create much fragmentation with
            // unused space.
            match self.page_size.checked_sub(size) {
                Some(diff) => diff * 5 < self.page_size, // 20 % unused space is the max allowed.
                None => false,
            }
    }

    fn find(&self, binding: &super::ManagedMemoryBinding) -> Result<&Slice, IoError> {
        let (page, _) = &self.pages[binding.descriptor().page()];
        page.find(binding)
    }

    fn try_reserve(&mut self, size: u64) -> Option<super::ManagedMemoryHandle> {
        // burn-phi3v patch: a free slice of exactly this size first, in any page, without
        // coalescing (upstream coalesces every page it visits and splits the merged slice again,
        // rebuilding the page's slice list at both steps: most of a decode step's device-thread
        // time in session 9's and 18's host profiles). A steady stream of same-sized
        // reservations (every decode step) then leaves the slice lists as they are. Where none
        // fits exactly, upstream's coalesce and first fit as before. `CUBECL_POOL_EXACT_FIRST=0`
        // restores upstream's order.
        let stats = pool_stats::enabled();
        if pool_stats::exact_first() {
            for (page, _) in self.pages.iter_mut() {
                if let Some(handle) = page.try_reserve_exact(size) {
                    if stats {
                        pool_stats::record(true, self.pages.iter().map(|(p, _)| p.slice_count()).sum());
                    }
                    return Some(handle);
                }
            }
        }
        if stats {
            pool_stats::record(false, self.pages.iter().map(|(p, _)| p.slice_count()).sum());
        }
        for (page, _) in self.pages.iter_mut() {
            page.coalesce();
            if let Some(handle) = page.try_reserve(size) {
                return Some(handle);
            }
        }

        None
    }

    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(level = "trace", skip(self, storage))
    )]
    fn alloc<Storage: crate::storage::ComputeStorage>(
        &mut self,
        storage: &mut Storage,
        size: u64,
    ) -> Result<super::ManagedMemoryHandle, crate::server::IoError> {
        let storage = storage.alloc(self.page_size)?;

        let storage_id = storage.id;
        let mut location_base = self.location_base;
        location_base.page = self.pages.len() as u16;

        let mut page = MemoryPage::new(storage, self.alignment, location_base);
        let returned = page.try_reserve(size);
        self.pages.push((page, storage_id));

        Ok(returned.expect("effective_size to be smaller than page_size"))
    }

    fn get_memory_usage(&self) -> MemoryUsage {
        let mut usage = MemoryUsage {
            number_allocs: 0,
            bytes_in_use: 0,
            bytes_padding: 0,
            bytes_reserved: 0,
        };

        for (page, _) in self.pages.iter() {
            let current = page.memory_usage();
            usage = usage.combine(current);
        }

        usage
    }

    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(level = "trace", skip(self, storage))
    )]
    fn cleanup<Storage: crate::storage::ComputeStorage>(
        &mut self,
        storage: &mut Storage,
        _alloc_nr: u64,
        explicit: bool,
    ) {
        if !explicit {
            return;
        }

        for (mut page, id) in self.pages.drain(..) {
            page.coalesce();
            let summary = page.summary(false);

            if summary.amount_free == summary.amount_total {
                storage.dealloc(id);
            } else {
                let page_pos = self.pages_tmp.len() as u16;
                page.update_page(page_pos);
                self.pages_tmp.push((page, id));
            }
        }

        core::mem::swap(&mut self.pages, &mut self.pages_tmp);
    }

    /// Binds a user defined [`ManagedMemoryHandle`] to a slice in this memory pool.
    fn bind(
        &mut self,
        reserved: ManagedMemoryHandle,
        assigned: ManagedMemoryHandle,
        cursor: u64,
    ) -> Result<(), IoError> {
        let (page, _) = &mut self.pages[reserved.descriptor().page()];

        page.bind(reserved, assigned, cursor)?;

        Ok(())
    }
}

impl Display for SlicedPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.pages.is_empty() {
            return Ok(());
        }

        f.write_fmt(format_args!(
            " - Sliced Pool page_size={} max_alloc_size={}\n",
            BytesFormat::new(self.page_size),
            BytesFormat::new(self.max_alloc_size)
        ))?;

        for (page, id) in self.pages.iter() {
            let summary = page.summary(false);
            f.write_fmt(format_args!(
                "   - Page {id} num_slices={} =>",
                summary.num_total
            ))?;

            let size_free = BytesFormat::new(summary.amount_free);
            let size_full = BytesFormat::new(summary.amount_full);
            let size_total = BytesFormat::new(summary.amount_total);

            f.write_fmt(format_args!(
                " {size_free} free - {size_full} full - {size_total} total\n"
            ))?;
        }

        f.write_fmt(format_args!("\n{}\n", self.get_memory_usage()))?;

        Ok(())
    }
}

/// burn-phi3v patch: the switch of the exact-size pass (`CUBECL_POOL_EXACT_FIRST`, on unless
/// `0`) and, with `CUBECL_POOL_STATS=1`, a line on stderr every 100000 reservations of the sliced
/// pools: how many found an exact slice, and the mean number of slices their pool's pages held.
mod pool_stats {
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

    /// 0: not read yet; 1: off; 2: on.
    static EXACT_FIRST: AtomicU8 = AtomicU8::new(0);
    static STATS: AtomicU8 = AtomicU8::new(0);
    static RESERVES: AtomicU64 = AtomicU64::new(0);
    static EXACT: AtomicU64 = AtomicU64::new(0);
    static SLICES: AtomicU64 = AtomicU64::new(0);

    fn flag(cell: &AtomicU8, var: &str, default: bool) -> bool {
        match cell.load(Ordering::Relaxed) {
            0 => {
                #[cfg(feature = "std")]
                let on = std::env::var(var).map(|v| v.trim() != "0").unwrap_or(default);
                #[cfg(not(feature = "std"))]
                let on = {
                    let _ = var;
                    default
                };
                cell.store(if on { 2 } else { 1 }, Ordering::Relaxed);
                on
            }
            v => v == 2,
        }
    }

    pub(super) fn exact_first() -> bool {
        flag(&EXACT_FIRST, "CUBECL_POOL_EXACT_FIRST", true)
    }

    pub(super) fn enabled() -> bool {
        flag(&STATS, "CUBECL_POOL_STATS", false)
    }

    pub(super) fn record(exact: bool, slices: usize) {
        let n = RESERVES.fetch_add(1, Ordering::Relaxed) + 1;
        let hits = EXACT.fetch_add(exact as u64, Ordering::Relaxed) + exact as u64;
        let total = SLICES.fetch_add(slices as u64, Ordering::Relaxed) + slices as u64;
        if n % 100_000 == 0 {
            #[cfg(feature = "std")]
            std::eprintln!(
                "cubecl pool: {n} sliced reservations, {hits} exact, {:.1} slices per pool on average",
                total as f64 / n as f64
            );
        }
    }
}
