//! den's benchmark scenarios that are also run as tests: the chaos run
//! (`den-bench chaos`; a short one runs in den's test suite).

pub mod chaos;
