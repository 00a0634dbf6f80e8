//! `org.eclipse.tahu.protobuf.Payload`: the Sparkplug B payload, as `prost` types.
//!
//! Source: `sparkplug_b/sparkplug_b.proto` of Eclipse Tahu (github.com/eclipse/tahu), which is
//! Copyright (c) 2015, 2018 Cirrus Link Solutions and others, made available under the Eclipse
//! Public License 2.0 (SPDX-License-Identifier: EPL-2.0). The Sparkplug 3.0 specification
//! ("Sparkplug B Payload Definition") refers to that file.
//!
//! This is the shape `prost-build` emits for that proto2 file (field numbers, types and
//! optionality one for one; the proto's `extensions` ranges have no Rust form and unknown
//! fields are skipped on decode), checked in so that building needs no `protoc`. Every
//! message is here, also those fieldgate never sends (templates, data sets), so that a
//! command carrying them decodes instead of failing.
//!
//! Must not: hold logic. The mapping between these types and our values is in
//! `super` (`mappings::sparkplug`).

#![allow(missing_docs, clippy::doc_markdown)]

/// The whole Sparkplug B payload (Sparkplug 3.0, "Payload").
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Payload {
    /// Timestamp at message sending time, ms since the Unix epoch, UTC.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: ::core::option::Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: ::prost::alloc::vec::Vec<payload::Metric>,
    /// Sequence number, 0-255.
    #[prost(uint64, optional, tag = "3")]
    pub seq: ::core::option::Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: ::core::option::Option<::prost::alloc::string::String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: ::core::option::Option<::prost::alloc::vec::Vec<u8>>,
}

/// Nested message and enum types in `Payload`.
pub mod payload {
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Template {
        #[prost(string, optional, tag = "1")]
        pub version: ::core::option::Option<::prost::alloc::string::String>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: ::prost::alloc::vec::Vec<Metric>,
        #[prost(message, repeated, tag = "3")]
        pub parameters: ::prost::alloc::vec::Vec<template::Parameter>,
        #[prost(string, optional, tag = "4")]
        pub template_ref: ::core::option::Option<::prost::alloc::string::String>,
        #[prost(bool, optional, tag = "5")]
        pub is_definition: ::core::option::Option<bool>,
    }
    /// Nested message and enum types in `Template`.
    pub mod template {
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Parameter {
            #[prost(string, optional, tag = "1")]
            pub name: ::core::option::Option<::prost::alloc::string::String>,
            #[prost(uint32, optional, tag = "2")]
            pub r#type: ::core::option::Option<u32>,
            #[prost(oneof = "parameter::Value", tags = "3, 4, 5, 6, 7, 8, 9")]
            pub value: ::core::option::Option<parameter::Value>,
        }
        /// Nested message and enum types in `Parameter`.
        pub mod parameter {
            #[derive(Clone, Copy, PartialEq, ::prost::Message)]
            pub struct ParameterValueExtension {}
            #[derive(Clone, PartialEq, ::prost::Oneof)]
            pub enum Value {
                #[prost(uint32, tag = "3")]
                IntValue(u32),
                #[prost(uint64, tag = "4")]
                LongValue(u64),
                #[prost(float, tag = "5")]
                FloatValue(f32),
                #[prost(double, tag = "6")]
                DoubleValue(f64),
                #[prost(bool, tag = "7")]
                BooleanValue(bool),
                #[prost(string, tag = "8")]
                StringValue(::prost::alloc::string::String),
                #[prost(message, tag = "9")]
                ExtensionValue(ParameterValueExtension),
            }
        }
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DataSet {
        #[prost(uint64, optional, tag = "1")]
        pub num_of_columns: ::core::option::Option<u64>,
        #[prost(string, repeated, tag = "2")]
        pub columns: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
        #[prost(uint32, repeated, packed = "false", tag = "3")]
        pub types: ::prost::alloc::vec::Vec<u32>,
        #[prost(message, repeated, tag = "4")]
        pub rows: ::prost::alloc::vec::Vec<data_set::Row>,
    }
    /// Nested message and enum types in `DataSet`.
    pub mod data_set {
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct DataSetValue {
            #[prost(oneof = "data_set_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
            pub value: ::core::option::Option<data_set_value::Value>,
        }
        /// Nested message and enum types in `DataSetValue`.
        pub mod data_set_value {
            #[derive(Clone, Copy, PartialEq, ::prost::Message)]
            pub struct DataSetValueExtension {}
            #[derive(Clone, PartialEq, ::prost::Oneof)]
            pub enum Value {
                #[prost(uint32, tag = "1")]
                IntValue(u32),
                #[prost(uint64, tag = "2")]
                LongValue(u64),
                #[prost(float, tag = "3")]
                FloatValue(f32),
                #[prost(double, tag = "4")]
                DoubleValue(f64),
                #[prost(bool, tag = "5")]
                BooleanValue(bool),
                #[prost(string, tag = "6")]
                StringValue(::prost::alloc::string::String),
                #[prost(message, tag = "7")]
                ExtensionValue(DataSetValueExtension),
            }
        }
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Row {
            #[prost(message, repeated, tag = "1")]
            pub elements: ::prost::alloc::vec::Vec<DataSetValue>,
        }
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PropertyValue {
        #[prost(uint32, optional, tag = "1")]
        pub r#type: ::core::option::Option<u32>,
        #[prost(bool, optional, tag = "2")]
        pub is_null: ::core::option::Option<bool>,
        #[prost(oneof = "property_value::Value", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
        pub value: ::core::option::Option<property_value::Value>,
    }
    /// Nested message and enum types in `PropertyValue`.
    pub mod property_value {
        #[derive(Clone, Copy, PartialEq, ::prost::Message)]
        pub struct PropertyValueExtension {}
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Value {
            #[prost(uint32, tag = "3")]
            IntValue(u32),
            #[prost(uint64, tag = "4")]
            LongValue(u64),
            #[prost(float, tag = "5")]
            FloatValue(f32),
            #[prost(double, tag = "6")]
            DoubleValue(f64),
            #[prost(bool, tag = "7")]
            BooleanValue(bool),
            #[prost(string, tag = "8")]
            StringValue(::prost::alloc::string::String),
            #[prost(message, tag = "9")]
            PropertysetValue(super::PropertySet),
            #[prost(message, tag = "10")]
            PropertysetsValue(super::PropertySetList),
            #[prost(message, tag = "11")]
            ExtensionValue(PropertyValueExtension),
        }
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PropertySet {
        #[prost(string, repeated, tag = "1")]
        pub keys: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
        #[prost(message, repeated, tag = "2")]
        pub values: ::prost::alloc::vec::Vec<PropertyValue>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PropertySetList {
        #[prost(message, repeated, tag = "1")]
        pub propertyset: ::prost::alloc::vec::Vec<PropertySet>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct MetaData {
        #[prost(bool, optional, tag = "1")]
        pub is_multi_part: ::core::option::Option<bool>,
        #[prost(string, optional, tag = "2")]
        pub content_type: ::core::option::Option<::prost::alloc::string::String>,
        #[prost(uint64, optional, tag = "3")]
        pub size: ::core::option::Option<u64>,
        #[prost(uint64, optional, tag = "4")]
        pub seq: ::core::option::Option<u64>,
        #[prost(string, optional, tag = "5")]
        pub file_name: ::core::option::Option<::prost::alloc::string::String>,
        #[prost(string, optional, tag = "6")]
        pub file_type: ::core::option::Option<::prost::alloc::string::String>,
        #[prost(string, optional, tag = "7")]
        pub md5: ::core::option::Option<::prost::alloc::string::String>,
        #[prost(string, optional, tag = "8")]
        pub description: ::core::option::Option<::prost::alloc::string::String>,
    }
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Metric {
        /// Metric name: on births (and on commands that do not use the alias).
        #[prost(string, optional, tag = "1")]
        pub name: ::core::option::Option<::prost::alloc::string::String>,
        /// Metric alias, tied to the name by the birth and used in later DATA messages.
        #[prost(uint64, optional, tag = "2")]
        pub alias: ::core::option::Option<u64>,
        /// Data acquisition time, ms since the Unix epoch, UTC.
        #[prost(uint64, optional, tag = "3")]
        pub timestamp: ::core::option::Option<u64>,
        #[prost(uint32, optional, tag = "4")]
        pub datatype: ::core::option::Option<u32>,
        #[prost(bool, optional, tag = "5")]
        pub is_historical: ::core::option::Option<bool>,
        #[prost(bool, optional, tag = "6")]
        pub is_transient: ::core::option::Option<bool>,
        #[prost(bool, optional, tag = "7")]
        pub is_null: ::core::option::Option<bool>,
        #[prost(message, optional, tag = "8")]
        pub metadata: ::core::option::Option<MetaData>,
        #[prost(message, optional, tag = "9")]
        pub properties: ::core::option::Option<PropertySet>,
        #[prost(
            oneof = "metric::Value",
            tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
        )]
        pub value: ::core::option::Option<metric::Value>,
    }
    /// Nested message and enum types in `Metric`.
    pub mod metric {
        #[derive(Clone, Copy, PartialEq, ::prost::Message)]
        pub struct MetricValueExtension {}
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Value {
            #[prost(uint32, tag = "10")]
            IntValue(u32),
            #[prost(uint64, tag = "11")]
            LongValue(u64),
            #[prost(float, tag = "12")]
            FloatValue(f32),
            #[prost(double, tag = "13")]
            DoubleValue(f64),
            #[prost(bool, tag = "14")]
            BooleanValue(bool),
            #[prost(string, tag = "15")]
            StringValue(::prost::alloc::string::String),
            #[prost(bytes, tag = "16")]
            BytesValue(::prost::alloc::vec::Vec<u8>),
            #[prost(message, tag = "17")]
            DatasetValue(super::DataSet),
            #[prost(message, tag = "18")]
            TemplateValue(super::Template),
            #[prost(message, tag = "19")]
            ExtensionValue(MetricValueExtension),
        }
    }
}
