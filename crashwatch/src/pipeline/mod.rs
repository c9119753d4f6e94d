//! The pipeline's stages, in order: [`assemble`] folds records into one crash per dying
//! process; [`symbolize`] names its stack; [`enrich`] builds the report (host, container,
//! pod, runtime details, last words); [`redact`] masks secrets in what the process said;
//! [`cluster`] fingerprints it and counts it. A stage takes and gives the model's types and
//! never reaches into another stage; the agent wires them.
pub mod assemble;
pub mod cluster;
pub mod enrich;
pub mod redact;
pub mod symbolize;
