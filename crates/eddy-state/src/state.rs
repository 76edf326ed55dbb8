//! The server's RocksDB and the column families (stores) in it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBWithThreadMode,
    DEFAULT_COLUMN_FAMILY_NAME, MultiThreaded, Options, WriteOptions,
};

use crate::{StateConfig, StateError, Store};

/// The RocksDB flavour used: column families can be created and dropped through `&self`.
pub(crate) type Db = DBWithThreadMode<MultiThreaded>;

/// The shared part of a [`StateStore`] and its [`Store`]s.
pub(crate) struct Inner {
    // Fields drop in declaration order: the database closes before the options and cache go.
    pub(crate) db: Db,
    path: PathBuf,
    /// Options of every store's column family (the same for all of them).
    cf_options: Options,
    /// WAL on, no fsync: see the crate documentation on durability.
    pub(crate) write_options: WriteOptions,
    /// The live stores by name, each with the flag its handles check to notice a drop. The
    /// mutex also serializes creating and dropping column families.
    stores: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
    _cache: Cache,
}

impl Inner {
    fn stores(&self) -> MutexGuard<'_, BTreeMap<String, Arc<AtomicBool>>> {
        // The map is updated only after the column family operation succeeded, so a panic
        // elsewhere while the lock was held leaves it consistent.
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The server's state: one RocksDB holding one column family per store.
///
/// Cheap to clone (all clones share the database, which closes when the last clone and the last
/// [`Store`] handle are dropped); `Send + Sync`.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.inner.path)
            .field("stores", &self.store_names())
            .finish()
    }
}

impl StateStore {
    /// Opens (creating it if missing, parent directories included) the RocksDB at `path`, with
    /// every store it already holds.
    ///
    /// Fails if another process (or another `StateStore` of this process) has it open.
    pub fn open(path: &Path, config: &StateConfig) -> Result<Self, StateError> {
        let open_error = |reason: String| StateError::Open {
            path: path.to_path_buf(),
            reason,
        };

        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Whole-key bloom filters make gets of absent keys (every insert of a new key in an
        // aggregation) skip the SST files; filters and indexes are charged to the shared cache
        // so that memory stays bounded by the config.
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let mut cf_options = Options::default();
        cf_options.set_compression_type(DBCompressionType::Lz4);
        cf_options.set_write_buffer_size(config.write_buffer_bytes);
        cf_options.set_block_based_table_factory(&table);

        let mut db_options = cf_options.clone();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        // Flush every column family's memtable together, so that after a crash of a database
        // written without WAL (or with a lost WAL tail) the stores still agree with each other.
        db_options.set_atomic_flush(true);
        db_options.set_max_open_files(config.max_open_files);
        db_options.set_keep_log_file_num(4);

        std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
        let existing = if path.join("CURRENT").exists() {
            Db::list_cf(&db_options, path).map_err(|e| open_error(e.into_string()))?
        } else {
            Vec::new()
        };
        let descriptors = existing
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(DEFAULT_COLUMN_FAMILY_NAME))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = Db::open_cf_descriptors(&db_options, path, descriptors)
            .map_err(|e| open_error(e.into_string()))?;

        let stores: BTreeMap<_, _> = existing
            .into_iter()
            .filter(|name| name != DEFAULT_COLUMN_FAMILY_NAME)
            .map(|name| (name, Arc::new(AtomicBool::new(false))))
            .collect();
        tracing::info!(
            path = %path.display(),
            stores = ?stores.keys().collect::<Vec<_>>(),
            "opened state directory"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                cf_options,
                write_options: WriteOptions::default(),
                stores: Mutex::new(stores),
                _cache: cache,
            }),
        })
    }

    /// A handle on the store `name`, creating its (empty) column family if it does not exist.
    ///
    /// Safe to call from several threads for the same name: they all get the same store.
    pub fn store(&self, name: &str) -> Result<Store, StateError> {
        validate_name(name)?;
        let mut stores = self.inner.stores();
        let dropped = match stores.get(name) {
            Some(dropped) => Arc::clone(dropped),
            None => {
                self.inner
                    .db
                    .create_cf(name, &self.inner.cf_options)
                    .map_err(|e| StateError::CreateStore {
                        store: name.to_owned(),
                        reason: e.into_string(),
                    })?;
                tracing::info!(store = name, "created state store");
                let dropped = Arc::new(AtomicBool::new(false));
                stores.insert(name.to_owned(), Arc::clone(&dropped));
                dropped
            }
        };
        Ok(Store::new(Arc::clone(&self.inner), name.into(), dropped))
    }

    /// Drops the store `name` and all its data; dropping a missing store does nothing.
    ///
    /// Handles on the dropped store fail with [`StateError::StoreDropped`] from then on, even if
    /// a store of the same name is created again. Its files are deleted once no scan of it is
    /// open.
    pub fn drop_store(&self, name: &str) -> Result<(), StateError> {
        validate_name(name)?;
        let mut stores = self.inner.stores();
        let Some(dropped) = stores.remove(name) else {
            return Ok(());
        };
        // Set before the column family goes, so that a handle that still finds the column
        // family afterwards by name (a new store of the same name) sees the flag.
        dropped.store(true, Ordering::SeqCst);
        if let Err(e) = self.inner.db.drop_cf(name) {
            dropped.store(false, Ordering::SeqCst);
            stores.insert(name.to_owned(), dropped);
            return Err(StateError::DropStore {
                store: name.to_owned(),
                reason: e.into_string(),
            });
        }
        tracing::info!(store = name, "dropped state store");
        Ok(())
    }

    /// The names of the stores, sorted.
    pub fn store_names(&self) -> Vec<String> {
        self.inner.stores().keys().cloned().collect()
    }

    /// The directory of the database, as given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// Rejects names that cannot name a store's column family.
fn validate_name(name: &str) -> Result<(), StateError> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name == DEFAULT_COLUMN_FAMILY_NAME {
        "the name is reserved for RocksDB's default column family"
    } else if name.contains('\0') {
        "the name contains a NUL character"
    } else {
        return Ok(());
    };
    Err(StateError::InvalidStoreName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreBatch;

    fn open(dir: &Path) -> StateStore {
        StateStore::open(dir, &StateConfig::default()).unwrap()
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<StateStore>();
        assert_send_sync::<Store>();
        fn assert_send<T: Send>() {}
        assert_send::<crate::ScanIter<'static>>();
        assert_send::<StoreBatch>();
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state");
        let state = open(&path);
        assert_eq!(state.path(), path);
        assert!(state.store_names().is_empty());
        assert!(path.join("CURRENT").exists());
    }

    #[test]
    fn open_error_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = StateStore::open(&file, &StateConfig::default()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StateError::Open { .. }), "{err:?}");
        assert!(
            message.starts_with(&format!(
                "cannot open state directory \"{}\": ",
                file.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn second_open_of_the_same_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let err = StateStore::open(dir.path(), &StateConfig::default()).unwrap_err();
        assert!(matches!(err, StateError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("lock"), "{err}");
    }

    #[test]
    fn invalid_store_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        for name in ["", "default", "a\0b"] {
            let err = state.store(name).unwrap_err();
            assert!(
                matches!(err, StateError::InvalidStoreName { .. }),
                "{err:?}"
            );
            assert!(state.drop_store(name).is_err(), "{name:?}");
        }
        assert_eq!(
            state.store("").unwrap_err().to_string(),
            "invalid state store name \"\": the name is empty"
        );
        assert!(state.store_names().is_empty());
    }

    #[test]
    fn reopening_lists_existing_stores() {
        let dir = tempfile::tempdir().unwrap();
        {
            let state = open(dir.path());
            let orders = state.store("orders").unwrap();
            state.store("users").unwrap();
            state.store("gone").unwrap();
            state.drop_store("gone").unwrap();
            let mut batch = StoreBatch::default();
            batch.put(b"o1", b"10");
            orders.write(3, batch).unwrap();
            assert_eq!(state.store_names(), ["orders", "users"]);
        }
        let state = open(dir.path());
        assert_eq!(state.store_names(), ["orders", "users"]);
        let orders = state.store("orders").unwrap();
        assert_eq!(orders.get(3, b"o1").unwrap().as_deref(), Some(&b"10"[..]));
        assert_eq!(
            state.store_names(),
            ["orders", "users"],
            "store() of an existing store"
        );
    }

    #[test]
    fn drop_store_then_store_again_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let old = state.store("t").unwrap();
        let other = state.store("u").unwrap();
        let mut batch = StoreBatch::default();
        batch.put(b"k", b"v");
        batch.set_source_offset(5);
        old.write(0, batch.clone()).unwrap();
        other.write(0, batch).unwrap();

        state.drop_store("t").unwrap();
        assert_eq!(state.store_names(), ["u"]);
        state.drop_store("t").unwrap(); // missing is Ok
        state.drop_store("never-existed").unwrap();

        let err = old.get(0, b"k").unwrap_err();
        assert!(matches!(err, StateError::StoreDropped { .. }), "{err:?}");
        assert_eq!(err.to_string(), "state store \"t\" was dropped");

        let new = state.store("t").unwrap();
        assert_eq!(new.get(0, b"k").unwrap(), None);
        assert_eq!(new.checkpoint(0).unwrap(), crate::Checkpoint::default());
        assert!(new.partitions().unwrap().is_empty());
        // The old handle must not reach the new store of the same name.
        assert!(old.get(0, b"k").is_err());
        let mut late = StoreBatch::default();
        late.put(b"late", b"write");
        assert!(old.write(0, late).is_err());
        assert_eq!(new.get(0, b"late").unwrap(), None);
        // The other store is untouched.
        assert_eq!(other.get(0, b"k").unwrap().as_deref(), Some(&b"v"[..]));
        // Store handles keep the database open too.
        drop((state, old, new, other));

        let state = open(dir.path());
        assert_eq!(state.store_names(), ["t", "u"]);
        assert_eq!(state.store("t").unwrap().get(0, b"k").unwrap(), None);
    }

    #[test]
    fn concurrent_store_creation_yields_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let state = state.clone();
                std::thread::spawn(move || {
                    let store = state.store("shared").unwrap();
                    let mut batch = StoreBatch::default();
                    batch.put(format!("k{i}").as_bytes(), b"v");
                    store.write(0, batch).unwrap();
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(state.store_names(), ["shared"]);
        let store = state.store("shared").unwrap();
        assert_eq!(store.scan(0, None, None).unwrap().count(), 8);
    }
}
