//! NVM command set execution.
